//! The fleet's claims on both control-plane databases: a submitted run is driven by one
//! worker at a time and retaken once its lease lapses; segments are claimed once each by
//! concurrent workers; and a queue entry whose repairer died holding it counts a failed
//! attempt each time, until it is parked dead (a poison entry stops killing workers).

use std::collections::HashSet;

use driftless_control::{ControlPlane, Detected, Mode, RunStart};
use driftless_tests::fresh_pg_database;

fn run(run_id: &str, mode: Mode) -> RunStart {
    RunStart {
        run_id: run_id.into(),
        mode,
        started_by: "test".into(),
        config_digest: "cfg".into(),
        started_us: 0,
        scope: "{}".into(),
    }
}

async fn runs_are_driven_by_one_worker_at_a_time(control: &ControlPlane) {
    control.queue_run(&run("r1", Mode::Repair)).await.unwrap();
    // A scan-only worker does not take a repair run.
    assert_eq!(
        control.claim_run("scanner", &[Mode::Scan], 100, 200).await.unwrap(),
        None
    );
    let claimed = control
        .claim_run("a", &[Mode::Scan, Mode::Repair], 100, 200)
        .await
        .unwrap();
    assert_eq!(claimed.map(|c| c.run_id), Some("r1".to_owned()));
    // Held by "a" until 200: nobody else takes it, and "a" renews it.
    assert_eq!(control.claim_run("b", &[Mode::Repair], 150, 250).await.unwrap(), None);
    assert!(control.renew_run("r1", "a", 400).await.unwrap());
    assert_eq!(control.claim_run("b", &[Mode::Repair], 300, 500).await.unwrap(), None);
    // Lapsed: "b" takes it, and "a" learns it lost it when it tries to renew.
    let retaken = control.claim_run("b", &[Mode::Repair], 401, 600).await.unwrap();
    assert_eq!(retaken.map(|c| c.run_id), Some("r1".to_owned()));
    assert!(!control.renew_run("r1", "a", 700).await.unwrap());
    // Handed back by a stopping worker: claimable at once.
    assert!(control.release_worker("b").await.unwrap() >= 1);
    let handed = control.claim_run("c", &[Mode::Repair], 402, 800).await.unwrap();
    assert_eq!(handed.map(|c| c.run_id), Some("r1".to_owned()));
}

async fn segments_are_claimed_once_each(control: &ControlPlane) {
    let segments: Vec<(String, u32, u32)> = (0..40)
        .map(|i| (format!("copy{}", i % 4), i * 10, i * 10 + 9))
        .collect();
    control.save_plan("r1", "d", 1000, &[], &segments).await.unwrap();
    let claims = futures::future::join_all((0..4).map(|w| {
        let control = control.clone();
        async move {
            let mut mine = Vec::new();
            while let Some(s) = control
                .claim_segment(Some("r1"), "cfg", &format!("w{w}"), 1_000, 2_000)
                .await
                .unwrap()
            {
                let leaves = vec![(1, 1); (s.leaf_last - s.leaf_first + 1) as usize];
                assert!(control.finish_segment(&s, &format!("w{w}"), &leaves).await.unwrap());
                mine.push((s.copy, s.leaf_first));
            }
            mine
        }
    }))
    .await;
    let all: Vec<_> = claims.iter().flatten().collect();
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (40, 40), "every segment claimed once");
    assert_eq!(control.segments_open("r1", "d").await.unwrap(), (0, 40));
    // Another config's worker never takes a run's segments.
    control
        .save_plan("r1", "e", 1, &[], &[("x".into(), 0, 0)])
        .await
        .unwrap();
    assert_eq!(
        control.claim_segment(None, "other", "w9", 1_000, 2_000).await.unwrap(),
        None
    );
    let leaves = control.leaves("r1", "d", "copy1").await.unwrap();
    assert_eq!(leaves.len(), 100, "a copy's segments' leaves, numbered by leaf");
}

async fn poison_entries_go_dead(control: &ControlPlane) {
    let entry = Detected {
        key_bytes: vec![7],
        key_json: "{\"id\":7}".into(),
        kind: "changed".into(),
        canonical_digest: Some(1),
        stage_count: 1,
        stage_sum: 2,
    };
    control.enqueue("r1", "d", "s", 1_000, &[entry]).await.unwrap();
    // Leased, and its repairer dies each time: the lease lapses twice.
    for (now, state) in [(10_000, "pending"), (30_000, "dead")] {
        let got = control
            .lease("r1", "d", "s", "w", now - 5_000, now - 1, 1)
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "leased before {now}");
        assert_eq!(control.reap_lapsed("d", "s", now, 2).await.unwrap(), 1);
        let entries = control.entries("d", "s", state).await.unwrap();
        assert_eq!(entries.len(), 1, "{state} after the lapse at {now}");
    }
    let dead = control.entries("d", "s", "dead").await.unwrap();
    assert_eq!(dead[0].attempts, 2);
    assert!(dead[0].last_error.as_deref().unwrap_or("").contains("repairer stopped"));
    // A live lease is never taken back.
    assert_eq!(control.reap_lapsed("d", "s", 0, 2).await.unwrap(), 0);
}

async fn exercise(control: ControlPlane) {
    runs_are_driven_by_one_worker_at_a_time(&control).await;
    segments_are_claimed_once_each(&control).await;
    poison_entries_go_dead(&control).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_fleet_claims_are_exclusive_and_lapse() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlPlane::connect(&format!("sqlite://{}", dir.path().join("c.db").display()))
        .await
        .unwrap();
    exercise(control).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_fleet_claims_are_exclusive_and_lapse() {
    let (_, url) = fresh_pg_database("fleet_claims").await;
    exercise(ControlPlane::connect(&url).await.unwrap()).await;
}
