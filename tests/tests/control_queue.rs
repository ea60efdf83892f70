//! The divergence queue on both control-plane databases: one live entry per key with its
//! first detection kept, leases that never exceed their limit and never overlap between
//! concurrent repairers, backoff, and dead entries.

use std::collections::HashSet;

use driftless_control::{Backoff, ControlPlane, Detected, RunStart, Settle, Settlement};
use driftless_tests::fresh_pg_database;

fn detected(i: u32) -> Detected {
    Detected {
        key_bytes: i.to_be_bytes().to_vec(),
        key_json: format!("{{\"id\":{i}}}"),
        kind: "changed".into(),
        canonical_digest: Some(u128::from(i)),
        stage_count: 1,
        stage_sum: u128::from(i) + 1,
    }
}

async fn start(control: &ControlPlane, run_id: &str) {
    control
        .start_run(&RunStart {
            run_id: run_id.into(),
            mode: driftless_control::Mode::Repair,
            started_by: "test".into(),
            config_digest: "x".into(),
            started_us: 0,
            scope: "{}".into(),
        })
        .await
        .unwrap();
}

async fn exercise(control: ControlPlane) {
    start(&control, "r1").await;
    let found: Vec<Detected> = (0..500).map(detected).collect();
    control.enqueue("r1", "d", "s", 1_000, &found).await.unwrap();
    // A later detection of the same keys keeps their first detection time.
    start(&control, "r2").await;
    control.enqueue("r2", "d", "s", 2_000, &found).await.unwrap();
    assert_eq!(control.depth("d", "s").await.unwrap().live, 500);
    assert_eq!(control.depth("d", "s").await.unwrap().oldest_first_seen_us, Some(1_000));

    // Four repairers lease concurrently: each lease holds at most its limit, and no entry
    // is claimed twice.
    let leases = futures::future::join_all((0..4).map(|w| {
        let control = control.clone();
        async move {
            let mut mine = Vec::new();
            loop {
                let got = control
                    .lease("r2", "d", "s", &format!("w{w}"), 3_000, 1_000_000, 7)
                    .await
                    .unwrap();
                assert!(got.len() <= 7, "a lease of 7 returned {}", got.len());
                if got.is_empty() {
                    break mine;
                }
                assert!(got.iter().all(|l| l.first_seen_us == 1_000));
                mine.extend(got.into_iter().map(|l| l.detected.key_bytes));
            }
        }
    }))
    .await;
    let all: Vec<&Vec<u8>> = leases.iter().flatten().collect();
    let distinct: HashSet<&Vec<u8>> = all.iter().copied().collect();
    assert_eq!(all.len(), 500, "every entry leased once");
    assert_eq!(distinct.len(), 500, "no entry leased twice");

    // Settling: a failure backs off, and the third failure parks the entry dead.
    let backoff = Backoff {
        base_ms: 10,
        max_ms: 1_000,
        max_attempts: 3,
    };
    // On SQLite one repairer may claim everything before the others start: pick one that
    // holds entries.
    let (w, held) = leases
        .iter()
        .enumerate()
        .find(|(_, l)| l.len() >= 2)
        .expect("someone holds two entries");
    let owner = format!("w{w}");
    let owner = owner.as_str();
    let key = held[0].clone();
    let fail = |key: &Vec<u8>| Settle {
        key_bytes: key.clone(),
        settlement: Settlement::Failed { error: "boom".into() },
        reseen: None,
        ledger: Vec::new(),
    };
    let states = control
        .settle("d", "s", owner, 3_000, &backoff, &[fail(&key)])
        .await
        .unwrap();
    assert_eq!(states, vec![(key.clone(), "pending".to_owned())]);
    // Not due before its backoff (10 ms after the first failure).
    assert!(
        control
            .lease("r2", "d", "s", owner, 12_999, 1_000_000, 500)
            .await
            .unwrap()
            .is_empty()
    );
    for (now, want) in [(13_000, "pending"), (40_000, "dead")] {
        let got = control.lease("r2", "d", "s", owner, now, 1_000_000, 500).await.unwrap();
        assert_eq!(got.len(), 1);
        let states = control
            .settle("d", "s", owner, now, &backoff, &[fail(&key)])
            .await
            .unwrap();
        assert_eq!(states, vec![(key.clone(), want.to_owned())]);
    }
    let dead = control.entries("d", "s", "dead").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].attempts, dead[0].last_error.as_deref()), (3, Some("boom")));
    // Only the owner settles its lease.
    let other = held[1].clone();
    let states = control
        .settle("d", "s", "not-the-owner", 3_000, &backoff, &[fail(&other)])
        .await
        .unwrap();
    assert!(states.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_queue_leases_are_bounded_and_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlPlane::connect(&format!("sqlite://{}", dir.path().join("c.db").display()))
        .await
        .unwrap();
    exercise(control).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_queue_leases_are_bounded_and_exclusive() {
    let (_, url) = fresh_pg_database("queue_control").await;
    exercise(ControlPlane::connect(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_opening_a_new_sqlite_control_plane_together_all_succeed() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let opened = futures::future::join_all((0..6).map(|_| ControlPlane::connect(&url))).await;
        for o in opened {
            let control = o.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(control.runs().await.unwrap().is_empty());
        }
    }
}
