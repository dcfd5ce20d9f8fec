use std::collections::BTreeMap;

use baton_types::{
    Decision, EventKind, GateId, GateKind, GateOutcome, GatePoint, GateRecord, GateStatus, Message,
    SessionId, SessionStatus, TimeoutAction, Usage,
};

use super::*;

fn open(dir: &Path, durability: Durability) -> Store {
    Store::open(StoreOptions::new(dir, durability)).unwrap()
}

fn meta(status: SessionStatus) -> SessionMeta {
    SessionMeta {
        tenant: baton_types::DEFAULT_TENANT.into(),
        created_at_unix_ms: 1,
        route: "echo".into(),
        system_prompt: String::new(),
        metadata: BTreeMap::new(),
        idempotency_key: None,
        status,
        status_reason: String::new(),
        updated_at_unix_ms: 1,
    }
}

#[tokio::test]
async fn records_survive_reopen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = SessionId::new();
    {
        let store = open(dir.path(), Durability::Sync);
        let mut b = Batch::new();
        b.put_meta(&s, &meta(SessionStatus::Idle), None);
        b.append(
            &s,
            1,
            10,
            &EventKind::SessionStarted {
                by: String::new(),
                tenant: baton_types::DEFAULT_TENANT.into(),
                route: "echo".into(),
                system_prompt: "p".into(),
                allowed_tools: vec![],
                client_tools: vec![],
                max_steps: 0,
                budget_usd: None,
                data_classes: Vec::new(),
                one_shot: false,
                history: Vec::new(),
                generation: Default::default(),
                replay_of: None,
            },
        );
        store.write(b).await.unwrap();
        let mut b = Batch::new();
        b.append(
            &s,
            2,
            11,
            &EventKind::TurnAccepted {
                by: String::new(),
                turn: 1,
                message: Message::user("x".repeat(40_000)),
                review: false,
            },
        );
        b.append(
            &s,
            3,
            12,
            &EventKind::TurnCompleted {
                turn: 1,
                usage: Usage::default(),
            },
        );
        store.write(b).await.unwrap();
        store.close();
    }
    let store = open(dir.path(), Durability::Sync);
    let events = store.read_journal(s, 0, 100).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    match &events[1].kind {
        EventKind::TurnAccepted { message, .. } => assert_eq!(message.content.len(), 40_000),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(store.read_journal(s, 1, 1).await.unwrap()[0].seq, 2);
    assert_eq!(store.read_journal_range(s, 1, 2).await.unwrap().len(), 1);
    assert_eq!(store.last_seq(s).await.unwrap(), 3);
    assert_eq!(store.last_seq(SessionId::new()).await.unwrap(), 0);
    assert_eq!(
        store.load_meta(s).await.unwrap().unwrap().status,
        SessionStatus::Idle
    );
}

#[tokio::test]
async fn concurrent_writers_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Sync);
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = SessionId::new();
            let mut b = Batch::new();
            b.append(
                &s,
                1,
                i,
                &EventKind::TurnCancelled {
                    by: String::new(),
                    turn: i,
                },
            );
            store.write(b).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let stats = store.writer_stats();
    assert_eq!(stats.requests, 400);
    assert!(stats.groups < 400, "expected shared commits, got {stats:?}");
    assert_eq!(stats.groups, stats.synced_groups);
}

#[tokio::test]
async fn unsynced_batches_never_fsync_and_buffered_mode_never_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Sync);
    let s = SessionId::new();
    let mut b = Batch::unsynced();
    b.append(
        &s,
        1,
        0,
        &EventKind::OutputDelta {
            turn: 1,
            attempt: 1,
            text: "a".into(),
        },
    );
    store.write(b).await.unwrap();
    assert_eq!(store.writer_stats().synced_groups, 0);
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Buffered);
    let mut b = Batch::new();
    b.append(
        &s,
        1,
        0,
        &EventKind::TurnCancelled {
            by: String::new(),
            turn: 1,
        },
    );
    store.write(b).await.unwrap();
    assert_eq!(store.writer_stats().synced_groups, 0);
    assert_eq!(store.read_journal(s, 0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn listing_is_paged_and_filtered_by_the_status_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Buffered);
    let mut ids = Vec::new();
    let mut b = Batch::new();
    for i in 0..25 {
        let s = SessionId::new();
        let status = if i % 5 == 0 {
            SessionStatus::Running
        } else {
            SessionStatus::Idle
        };
        b.put_meta(&s, &meta(status), None);
        ids.push((s, status));
    }
    store.write(b).await.unwrap();

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_sessions(None, after, 10).await.unwrap();
        seen.extend(page.sessions.iter().map(|(id, _)| *id));
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().map(|(id, _)| *id).collect::<Vec<_>>());

    let running = store
        .list_sessions(Some(SessionStatus::Running), None, 100)
        .await
        .unwrap();
    assert_eq!(running.sessions.len(), 5);
    assert!(running.next_after.is_none());
    assert_eq!(
        store
            .sessions_with_status(SessionStatus::Running)
            .await
            .unwrap()
            .len(),
        5
    );

    // Moving a session's status moves its index entry.
    let (first, _) = ids[0];
    let mut b = Batch::new();
    b.put_meta(
        &first,
        &meta(SessionStatus::Idle),
        Some(SessionStatus::Running),
    );
    store.write(b).await.unwrap();
    assert_eq!(
        store
            .sessions_with_status(SessionStatus::Running)
            .await
            .unwrap()
            .len(),
        4
    );
    assert_eq!(store.count_sessions().await.unwrap(), 25);
}

/// Every page of a scan, following its tokens.
async fn scan_all(store: &Store, mut q: session_list::SessionScan) -> (Vec<SessionId>, usize) {
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.scan_sessions(q.clone()).await.unwrap();
        pages += 1;
        assert!(page.sessions.len() <= q.limit);
        seen.extend(page.sessions.iter().map(|(id, _)| *id));
        match page.next_after {
            Some(a) => q.after = Some(a),
            None => return (seen, pages),
        }
        assert!(pages < 1000, "the scan ends");
    }
}

#[tokio::test]
async fn scans_go_either_way_filter_by_route_and_flow_and_stop_at_their_cap() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Buffered);
    let mut all = Vec::new();
    let mut b = Batch::new();
    for i in 0..40 {
        let s = SessionId::new();
        let mut m = meta(if i % 4 == 0 {
            SessionStatus::Running
        } else {
            SessionStatus::Idle
        });
        m.tenant = if i % 2 == 0 { "acme" } else { "globex" }.into();
        m.route = if i % 3 == 0 { "cheap" } else { "smart" }.into();
        if i % 10 == 7 {
            m.metadata.insert("flow".into(), "triage".into());
        }
        b.put_meta(&s, &m, None);
        all.push((s, m));
    }
    store.write(b).await.unwrap();
    let ids = |f: &dyn Fn(&SessionMeta) -> bool| -> Vec<SessionId> {
        all.iter()
            .filter(|(_, m)| f(m))
            .map(|(id, _)| *id)
            .collect()
    };
    let q = |limit| session_list::SessionScan {
        limit,
        ..Default::default()
    };
    // Oldest first and newest first, through every source.
    let (seen, _) = scan_all(&store, q(7)).await;
    assert_eq!(seen, ids(&|_| true));
    let mut newest = ids(&|_| true);
    newest.reverse();
    let (seen, _) = scan_all(
        &store,
        session_list::SessionScan {
            newest_first: true,
            ..q(7)
        },
    )
    .await;
    assert_eq!(seen, newest);
    let mut want = ids(&|m| m.tenant == "acme" && m.status == SessionStatus::Running);
    want.reverse();
    let scan = session_list::SessionScan {
        tenant: Some("acme".into()),
        status: Some(SessionStatus::Running),
        newest_first: true,
        ..q(3)
    };
    assert_eq!(scan_all(&store, scan).await.0, want);
    let mut want = ids(&|m| m.status == SessionStatus::Idle);
    want.reverse();
    let scan = session_list::SessionScan {
        status: Some(SessionStatus::Idle),
        newest_first: true,
        ..q(5)
    };
    assert_eq!(scan_all(&store, scan).await.0, want);
    // Route and flow filters, alone and with a tenant.
    let scan = session_list::SessionScan {
        route: Some("cheap".into()),
        ..q(4)
    };
    assert_eq!(scan_all(&store, scan).await.0, ids(&|m| m.route == "cheap"));
    let scan = session_list::SessionScan {
        tenant: Some("globex".into()),
        flow: Some("triage".into()),
        ..q(50)
    };
    let want =
        ids(&|m| m.tenant == "globex" && m.metadata.get("flow").is_some_and(|f| f == "triage"));
    assert_eq!(want.len(), 4);
    assert_eq!(scan_all(&store, scan).await.0, want);
    // A cap of 6 entries a page: short pages with tokens, every match once.
    let scan = session_list::SessionScan {
        flow: Some("triage".into()),
        max_scan: 6,
        ..q(50)
    };
    let (seen, pages) = scan_all(&store, scan).await;
    assert_eq!(
        seen,
        ids(&|m| m.metadata.get("flow").is_some_and(|f| f == "triage"))
    );
    assert!(pages >= 7, "40 sessions, 6 a page: {pages} pages");
}

#[tokio::test]
async fn deleting_a_session_removes_every_trace_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Sync);
    let (a, b_id) = (SessionId::new(), SessionId::new());
    let mut m = meta(SessionStatus::Idle);
    m.idempotency_key = Some("k1".into());
    let mut b = Batch::new();
    for s in [a, b_id] {
        b.put_meta(&s, &m, None);
        b.append(
            &s,
            1,
            0,
            &EventKind::TurnAccepted {
                by: String::new(),
                turn: 1,
                message: Message::user("y".repeat(20_000)),
                review: false,
            },
        );
        b.put_snapshot(&s, vec![1, 2, 3]);
    }
    b.put_idempotency("k1", &a);
    store.write(b).await.unwrap();
    assert_eq!(store.find_idempotency("k1".into()).await.unwrap(), Some(a));

    let mut b = Batch::new();
    b.delete_session(&a, &m);
    store.write(b).await.unwrap();
    assert!(store.load_meta(a).await.unwrap().is_none());
    assert!(store.read_journal(a, 0, 10).await.unwrap().is_empty());
    assert!(store.load_snapshot(a).await.unwrap().is_none());
    assert_eq!(store.find_idempotency("k1".into()).await.unwrap(), None);
    // The other session is intact, payload included.
    assert_eq!(store.read_journal(b_id, 0, 10).await.unwrap().len(), 1);
    assert!(store.load_snapshot(b_id).await.unwrap().is_some());
}

#[tokio::test]
async fn a_corrupt_record_is_reported_with_session_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Sync);
    let s = SessionId::new();
    let mut b = Batch::new();
    b.append(
        &s,
        1,
        0,
        &EventKind::TurnCancelled {
            by: String::new(),
            turn: 1,
        },
    );
    b.push(Op::Put {
        cf: CF_JOURNAL,
        key: keys::journal_key(&s, 2).to_vec(),
        value: vec![0xde, 0xad, 0xbe, 0xef],
    });
    store.write(b).await.unwrap();
    let err = store.read_journal(s, 0, 10).await.unwrap_err();
    assert!(err.is_corruption());
    assert!(
        err.to_string()
            .contains(&format!("journal record 2 of session {s}")),
        "{err}"
    );
    // Reading up to the good record still works, and last_seq reads keys only.
    assert_eq!(store.read_journal(s, 0, 1).await.unwrap().len(), 1);
    assert_eq!(store.last_seq(s).await.unwrap(), 2);
}

#[tokio::test]
async fn checkpoint_is_a_readable_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("db"), Durability::Sync);
    let s = SessionId::new();
    let mut b = Batch::new();
    b.append(
        &s,
        1,
        0,
        &EventKind::TurnCancelled {
            by: String::new(),
            turn: 1,
        },
    );
    store.write(b).await.unwrap();
    store.checkpoint(dir.path().join("cp")).await.unwrap();
    let copy = open(&dir.path().join("cp"), Durability::Sync);
    assert_eq!(copy.read_journal(s, 0, 10).await.unwrap().len(), 1);
}

fn gate(n: u8, session: SessionId, policy: &str, status: GateStatus, deadline: u64) -> GateRecord {
    let mut id = [0u8; 16];
    id[15] = n;
    GateRecord {
        gate_id: GateId::from_bytes(id),
        session,
        turn: 1,
        kind: GateKind::FinalAnswer,
        point: GatePoint::FinalAnswer,
        policy: policy.into(),
        reason: String::new(),
        reviewers: "r".into(),
        subject: "{}".into(),
        call_id: String::new(),
        opened_at_unix_ms: 1,
        deadline_unix_ms: deadline,
        on_timeout: TimeoutAction::Reject,
        escalations: 0,
        tenant: "acme".into(),
        outcome: (status == GateStatus::Decided).then(|| GateOutcome {
            decision: Decision::Approve,
            reviewer: "ana".into(),
            reason: "fine".into(),
            edited: String::new(),
            decided_at_unix_ms: 2,
            by_timeout: false,
        }),
    }
}

#[tokio::test]
async fn gates_page_stably_by_any_filter_and_deadlines_are_found() {
    use GateStatus::*;
    use gates::GateFilter;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Buffered);
    let (s1, s2) = (SessionId::new(), SessionId::new());
    // Interleaved statuses, policies and sessions.
    let all = vec![
        gate(1, s1, "a", Decided, 0),
        gate(2, s2, "a", Pending, 50),
        gate(3, s1, "b", Pending, 0),
        gate(4, s2, "a", Decided, 0),
        gate(5, s1, "a", Pending, 10),
        gate(6, s2, "b", Decided, 0),
    ];
    let mut b = Batch::new();
    for g in &all {
        b.put_gate(g, None);
    }
    store.write(b).await.unwrap();
    let walk = |filter: GateFilter| {
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            let mut after = None;
            loop {
                let page = store.list_gates(filter.clone(), after, 1).await.unwrap();
                ids.extend(page.gates.iter().map(|g| g.gate_id.as_bytes()[15]));
                match page.next_after {
                    Some(a) => after = Some(a),
                    None => return ids,
                }
            }
        }
    };
    assert_eq!(walk(GateFilter::default()).await, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(
        walk(GateFilter {
            status: Some(Pending),
            ..Default::default()
        })
        .await,
        vec![2, 3, 5]
    );
    assert_eq!(
        walk(GateFilter {
            policy: Some("a".into()),
            ..Default::default()
        })
        .await,
        vec![1, 2, 4, 5]
    );
    assert_eq!(
        walk(GateFilter {
            policy: Some("a".into()),
            status: Some(Decided),
            ..Default::default()
        })
        .await,
        vec![1, 4]
    );
    assert_eq!(
        walk(GateFilter {
            session: Some(s1),
            ..Default::default()
        })
        .await,
        vec![1, 3, 5]
    );
    assert_eq!(
        walk(GateFilter {
            session: Some(s2),
            status: Some(Pending),
            ..Default::default()
        })
        .await,
        vec![2]
    );
    // Deadlines: only pending gates with a deadline, oldest first.
    let due: Vec<u8> = store
        .due_gates(100, 10)
        .await
        .unwrap()
        .iter()
        .map(|g| g.gate_id.as_bytes()[15])
        .collect();
    assert_eq!(due, vec![5, 2]);
    assert!(store.due_gates(20, 10).await.unwrap().len() == 1);
    // Deciding gate 5 moves its index entries.
    let decided = gate(5, s1, "a", Decided, 10);
    let mut b = Batch::new();
    b.put_gate(&decided, Some(&all[4]));
    store.write(b).await.unwrap();
    assert_eq!(
        walk(GateFilter {
            status: Some(Pending),
            ..Default::default()
        })
        .await,
        vec![2, 3]
    );
    assert_eq!(store.due_gates(100, 10).await.unwrap().len(), 1);
    assert_eq!(
        store.get_gate(decided.gate_id).await.unwrap().unwrap(),
        decided
    );
}

#[tokio::test]
async fn a_tenants_and_a_groups_queue_come_from_their_own_entries_in_queue_order() {
    use GateStatus::*;
    use gates::{QueuePos, QueueScope};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Buffered);
    let s = SessionId::new();
    let with = |n: u8, tenant: &str, group: &str, deadline: u64| GateRecord {
        tenant: tenant.into(),
        reviewers: group.into(),
        ..gate(n, s, "p", Pending, deadline)
    };
    let all = vec![
        with(1, "acme", "ops", 0),
        with(2, "acme", "legal", 0),
        with(3, "globex", "ops", 0),
        with(4, "acme", "ops", 30),
        with(5, "acme", "ops", 0),
        with(6, "acme", "ops", 20),
        with(7, "acme", "", 0),
        // Stored before gates carried their tenant: no scoped entries.
        with(8, "", "ops", 0),
    ];
    let mut b = Batch::new();
    for g in &all {
        b.put_gate(g, None);
    }
    store.write(b).await.unwrap();
    let walk = |scopes: Vec<QueueScope>| {
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            let mut after: Option<QueuePos> = None;
            loop {
                let page = store.gate_queue(scopes.clone(), after, 2).await.unwrap();
                ids.extend(page.gates.iter().map(|g| g.gate_id.as_bytes()[15]));
                match page.next_after {
                    Some(a) => after = Some(a),
                    None => return ids,
                }
            }
        }
    };
    let ops = QueueScope::Group {
        tenant: "acme".into(),
        group: "ops".into(),
    };
    assert_eq!(walk(vec![ops.clone()]).await, vec![6, 4, 5, 1]);
    assert_eq!(
        walk(vec![QueueScope::Tenant("acme".into())]).await,
        vec![6, 4, 7, 5, 2, 1]
    );
    assert_eq!(
        walk(vec![QueueScope::Tenant("globex".into())]).await,
        vec![3]
    );
    // A reviewer of ops: its group's and anyone's, merged in queue order.
    let anyone = QueueScope::Group {
        tenant: "acme".into(),
        group: String::new(),
    };
    assert_eq!(walk(vec![ops.clone(), anyone]).await, vec![6, 4, 7, 5, 1]);
    assert_eq!(
        walk(vec![QueueScope::All]).await,
        vec![6, 4, 8, 7, 5, 3, 2, 1]
    );
    // Decided: out of its queues.
    let mut b = Batch::new();
    let decided = GateRecord {
        outcome: gate(5, s, "p", Decided, 0).outcome,
        ..all[4].clone()
    };
    b.put_gate(&decided, Some(&all[4]));
    store.write(b).await.unwrap();
    assert_eq!(walk(vec![ops.clone()]).await, vec![6, 4, 1]);
    // A data dir from before: at its next open, gate 8 gets its entries
    // from its session's tenant.
    let mut b = Batch::new();
    b.put_meta(
        &s,
        &SessionMeta {
            tenant: "acme".into(),
            ..meta(SessionStatus::Running)
        },
        None,
    );
    store.write(b).await.unwrap();
    let db = &store.inner.db;
    db.delete_cf(
        writer::cf_handle(db, CF_INDEXES).unwrap(),
        keys::GATE_QUEUE_INDEX_MARKER,
    )
    .unwrap();
    drop(store);
    let store = open(dir.path(), Durability::Buffered);
    let page = store.gate_queue(vec![ops], None, 10).await.unwrap();
    let ids: Vec<u8> = page
        .gates
        .iter()
        .map(|g| g.gate_id.as_bytes()[15])
        .collect();
    assert_eq!(ids, vec![6, 4, 8, 1]);
}

/// Every byte under the store's directory, as one buffer (a raw search).
fn raw_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(raw_bytes(&p));
        } else {
            out.extend(std::fs::read(&p).unwrap_or_default());
        }
    }
    out
}

#[tokio::test]
async fn sealed_sessions_leave_no_plaintext_and_are_unreadable_once_erased() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let master = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let ring = Arc::new(
        seal::Keyring::open(
            keys.path(),
            seal::MasterKey::from_hex(master).unwrap(),
            None,
        )
        .unwrap(),
    );
    let mut opts = StoreOptions::new(dir.path(), Durability::Sync);
    opts.keyring = Some(ring.clone());
    let store = Store::open(opts).unwrap();
    let s = SessionId::new();
    let marker = "MARKER-7f3a9c";
    let big = format!("{marker} {}", "x".repeat(PAYLOAD_INLINE_LIMIT + 10));
    let mut b = Batch::new();
    b.seal_with(Some(ring.for_subject("cust-1").unwrap()));
    b.put_meta(&s, &meta(SessionStatus::Idle), None);
    b.append(
        &s,
        1,
        10,
        &EventKind::TurnAccepted {
            turn: 1,
            message: Message::user(format!("hello {marker}")),
            review: false,
            by: String::new(),
        },
    );
    b.append(
        &s,
        2,
        11,
        &EventKind::TurnAccepted {
            turn: 2,
            message: Message::user(big.clone()),
            review: false,
            by: String::new(),
        },
    );
    b.put_snapshot(&s, format!("snapshot {marker}").into_bytes());
    store.write(b).await.unwrap();
    let events = store.read_journal(s, 0, 10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert!(format!("{:?}", events[1].kind).contains(&big));
    assert_eq!(
        store.load_snapshot(s).await.unwrap().unwrap(),
        format!("snapshot {marker}").into_bytes()
    );
    store.close();
    drop(store);
    let raw = raw_bytes(dir.path());
    assert!(
        !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "plaintext in the data directory"
    );
    // Erased: nothing of the session reads again.
    assert!(ring.erase("cust-1").unwrap());
    let mut opts = StoreOptions::new(dir.path(), Durability::Sync);
    opts.keyring = Some(ring);
    let store = Store::open(opts).unwrap();
    assert!(matches!(
        store.read_journal(s, 0, 10).await,
        Err(Error::Erased(_))
    ));
    assert!(matches!(
        store.load_snapshot(s).await,
        Err(Error::Erased(_))
    ));
    // Without a keyring, a sealed store says why it cannot read.
    store.close();
    drop(store);
    let store = open(dir.path(), Durability::Sync);
    let err = store.read_journal(s, 0, 10).await.unwrap_err();
    assert!(err.to_string().contains("no keyring"), "{err}");
}

#[tokio::test]
async fn memory_stays_within_one_cache_and_one_memtable_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StoreOptions::new(dir.path(), Durability::Buffered);
    opts.cache_bytes = 1 << 20;
    opts.memtable_bytes = 1 << 20;
    let store = Store::open(opts).unwrap();
    // 16 MiB of records over 64 sessions: 16 times the memtable budget.
    let by = "x".repeat(4096);
    let sessions: Vec<_> = (0..64).map(|_| SessionId::new()).collect();
    for seq in 1..=64u64 {
        let mut b = Batch::new();
        for s in &sessions {
            b.append(
                s,
                seq,
                seq,
                &EventKind::TurnCancelled {
                    by: by.clone(),
                    turn: seq,
                },
            );
        }
        store.write(b).await.unwrap();
    }
    // Flushed past the budget: RocksDB checks it on each write and flushes
    // in the background, so small writes go on while we wait, as they
    // would in a live server.
    let mut m = store.memory();
    for i in 0..100u64 {
        if m.memtable_bytes < 6 << 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut b = Batch::new();
        b.append(
            &SessionId::new(),
            1,
            i,
            &EventKind::TurnCancelled {
                by: String::new(),
                turn: i,
            },
        );
        store.write(b).await.unwrap();
        m = store.memory();
    }
    assert!(
        m.memtable_bytes < 6 << 20,
        "memtables hold {} bytes after 16 MiB written with a 1 MiB budget",
        m.memtable_bytes
    );
    // Everything read back through the one small cache.
    for s in &sessions {
        let records = store.read_journal(*s, 0, 100).await.unwrap();
        assert_eq!(records.len(), 64);
    }
    let m = store.memory();
    assert!(m.cache_bytes > 0, "nothing went through the cache: {m:?}");
    assert!(
        m.cache_bytes <= 2 << 20,
        "the cache holds {} bytes with a 1 MiB budget",
        m.cache_bytes
    );
}
