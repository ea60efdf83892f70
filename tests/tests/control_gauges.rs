//! The control plane's fleet-wide reads on both databases: workers heartbeating by role,
//! runs held for approval (and an approval that queues the run again for the fleet), and
//! the finished runs' work summed into counters and a run-duration histogram.

use driftless_control::{ControlPlane, Mode, RunStart, RunStatus, StageCounts};
use driftless_tests::fresh_pg_database;

fn held_run() -> RunStart {
    RunStart {
        run_id: "held-1".into(),
        mode: Mode::Repair,
        started_by: "test".into(),
        config_digest: "cfg".into(),
        started_us: 0,
        scope: "{}".into(),
    }
}

async fn heartbeats_count_by_role(control: &ControlPlane) {
    control.heartbeat("a", &["scan", "repair"], 1_000).await.unwrap();
    control.heartbeat("b", &["scan"], 2_000).await.unwrap();
    control.heartbeat("c", &["schedule"], 50).await.unwrap();
    let alive = control.workers_by_role(500).await.unwrap();
    assert_eq!(alive.get("scan"), Some(&2));
    assert_eq!(alive.get("repair"), Some(&1));
    assert_eq!(alive.get("schedule"), None, "c's heartbeat is too old");
    control.heartbeat("c", &["schedule"], 3_000).await.unwrap();
    control.forget_worker("a").await.unwrap();
    let alive = control.workers_by_role(500).await.unwrap();
    assert_eq!(
        (alive.get("scan"), alive.get("repair"), alive.get("schedule")),
        (Some(&1), None, Some(&1))
    );
}

async fn an_approved_run_is_queued_again_with_its_caps(control: &ControlPlane) {
    control.queue_run(&held_run()).await.unwrap();
    control.claim_run("w", &[Mode::Repair], 10, 20).await.unwrap().unwrap();
    let stage = StageCounts {
        dataset: "d".into(),
        stage: "s".into(),
        canonical_rows: 1,
        stage_rows: 7,
        divergent: 8,
        repaired: 0,
        held: Some("over the ratio".into()),
        duplicates: 0,
        held_back_us: 0,
    };
    control
        .finish_run("held-1", RunStatus::Held, 30, &[stage])
        .await
        .unwrap();
    assert_eq!(control.held_runs().await.unwrap(), 1);
    assert!(control.requeue_approved("held-1", "api", 40).await.unwrap());
    assert!(
        !control.requeue_approved("held-1", "api", 41).await.unwrap(),
        "approved once only"
    );
    assert_eq!(control.held_runs().await.unwrap(), 0);
    let claimed = control.claim_run("w2", &[Mode::Repair], 50, 60).await.unwrap().unwrap();
    assert_eq!((claimed.run_id.as_str(), claimed.approved), ("held-1", true));
    let info = control.run_info("held-1").await.unwrap().unwrap();
    assert_eq!(
        info.held.len(),
        1,
        "the held stage and its count stay until the run finishes again"
    );
}

/// Two finished runs of dataset `w`: their stages' work summed, canonical counted once a
/// run, their wall times bucketed.
async fn finished_work_is_summed_into_counters(control: &ControlPlane) {
    for (i, took) in [(1, 2_000_000), (2, 90_000_000)] {
        let mut run = held_run();
        run.run_id = format!("work-{i}");
        run.started_us = 1_000;
        control.start_run(&run).await.unwrap();
        let stages: Vec<StageCounts> = ["x", "y"]
            .iter()
            .map(|stage| StageCounts {
                dataset: "w".into(),
                stage: (*stage).into(),
                canonical_rows: 10,
                stage_rows: if *stage == "x" { 12 } else { 9 },
                divergent: 0,
                repaired: 0,
                held: None,
                duplicates: 2,
                held_back_us: 1_500_000,
            })
            .collect();
        control
            .finish_run(&run.run_id, RunStatus::Consistent, 1_000 + took, &stages)
            .await
            .unwrap();
    }
    let mut work = control.stage_work().await.unwrap();
    work.retain(|w| w.dataset == "w");
    work.sort_by(|a, b| a.stage.cmp(&b.stage));
    let sums: Vec<(&str, i64, i64, i64)> = work
        .iter()
        .map(|w| (w.stage.as_str(), w.stage_rows, w.duplicates, w.held_back_us))
        .collect();
    assert_eq!(sums, [("x", 24, 4, 3_000_000), ("y", 18, 4, 3_000_000)]);
    let canonical = control.canonical_rows().await.unwrap();
    assert!(canonical.contains(&("w".to_owned(), 20)), "{canonical:?}");
    let durations = control.run_durations(&[10_000_000, 100_000_000]).await.unwrap();
    let w = durations.iter().find(|d| d.dataset == "w").unwrap();
    assert_eq!((w.count, w.sum_us, w.at_most.clone()), (2, 92_000_000, vec![1, 2]));
}

async fn exercise(control: ControlPlane) {
    heartbeats_count_by_role(&control).await;
    an_approved_run_is_queued_again_with_its_caps(&control).await;
    finished_work_is_summed_into_counters(&control).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_fleet_reads() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlPlane::connect(&format!("sqlite://{}", dir.path().join("c.db").display()))
        .await
        .unwrap();
    exercise(control).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_fleet_reads() {
    let (_, url) = fresh_pg_database("fleet_reads").await;
    exercise(ControlPlane::connect(&url).await.unwrap()).await;
}
