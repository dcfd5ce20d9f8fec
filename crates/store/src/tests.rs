use std::collections::BTreeMap;

use baton_types::{
    Decision, EventKind, GateId, GateKind, GateOutcome, GatePoint, GateRecord, GateStatus, Message,
    SessionId, SessionStatus, TimeoutAction, Usage,
};

use super::*;

fn open(place: &Place, durability: Durability) -> Store {
    Store::open(place.options(durability)).unwrap()
}

/// Where one test's store lives: a RocksDB directory, or a database of
/// its own on the PostgreSQL server this test binary shares.
struct Place {
    dir: tempfile::TempDir,
    postgres: Option<String>,
}

static PG: std::sync::OnceLock<Result<baton_pgtest::PgServer, String>> = std::sync::OnceLock::new();

impl Place {
    fn rocksdb() -> Place {
        Place {
            dir: tempfile::tempdir().unwrap(),
            postgres: None,
        }
    }

    fn postgres() -> Place {
        let server = match PG.get_or_init(baton_pgtest::PgServer::start) {
            Ok(s) => s,
            Err(e) => panic!("cannot start PostgreSQL: {e}"),
        };
        Place {
            dir: tempfile::tempdir().unwrap(),
            postgres: Some(server.database().unwrap()),
        }
    }

    /// A new, empty place on the same backend.
    fn another(&self) -> Place {
        match self.postgres {
            None => Place::rocksdb(),
            Some(_) => Place::postgres(),
        }
    }

    fn options(&self, durability: Durability) -> StoreOptions {
        let mut o = StoreOptions::new(self.dir.path(), durability);
        o.postgres = self.postgres.clone().map(postgres::PgOptions::new);
        o
    }
}

/// Each named test, run once on each backend (`name::rocksdb`,
/// `name::postgres`): one suite, two databases.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rocksdb() {
                super::$name(super::Place::rocksdb()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Place::postgres()).await
            }
        }
    )*};
}

on_both_backends!(
    records_survive_reopen_in_order,
    concurrent_writers_share_group_commits,
    unsynced_batches_never_fsync_and_buffered_mode_never_fsyncs,
    listing_is_paged_and_filtered_by_the_status_index,
    scans_go_either_way_filter_by_route_and_flow_and_stop_at_their_cap,
    deleting_a_session_removes_every_trace_and_nothing_else,
    a_corrupt_record_is_reported_with_session_and_seq,
    gates_page_stably_by_any_filter_and_deadlines_are_found,
    a_tenants_and_a_groups_queue_come_from_their_own_entries_in_queue_order,
    route_spend_parts_of_several_nodes_add_up_and_tenant_spend_is_read_per_session,
);

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

/// Where several nodes serve at once, each writes its own part of a
/// route's spend: the parts (and the one total a lone node writes) add up,
/// a node reads its own back, and writing one part leaves the others. A
/// session's spend in a period is read by key.
async fn route_spend_parts_of_several_nodes_add_up_and_tenant_spend_is_read_per_session(
    place: Place,
) {
    let store = open(&place, Durability::Sync);
    let mut b = Batch::new();
    b.put_route_spend("fast", 1.0);
    b.put_node_route_spend("fast", "n0", 2.0);
    b.put_node_route_spend("fast", "n1", 4.0);
    b.put_node_route_spend("slow", "n1", 8.0);
    let (s, t) = (SessionId::new(), SessionId::new());
    b.put_tenant_spend("acme", "d2026-12-07", &s, 0.25);
    b.put_tenant_spend("acme", "m2026-12", &s, 0.75);
    store.write(b).await.unwrap();
    let all = store.route_spends().await.unwrap();
    assert_eq!(all.get("fast"), Some(&7.0));
    assert_eq!(all.get("slow"), Some(&8.0));
    assert_eq!(all.len(), 2);
    let n1 = store.route_spends_of("n1").await.unwrap();
    assert_eq!(n1.get("fast"), Some(&4.0));
    assert_eq!(n1.get("slow"), Some(&8.0));
    assert_eq!(store.route_spends_of("n2").await.unwrap().len(), 0);
    let mut b = Batch::new();
    b.put_node_route_spend("fast", "n0", 3.0);
    store.write(b).await.unwrap();
    assert_eq!(store.route_spends().await.unwrap().get("fast"), Some(&8.0));
    // Under the writer lease again: the parts fold into one total each.
    store.fold_route_spends().await.unwrap();
    let folded = store.route_spends().await.unwrap();
    assert_eq!(folded.get("fast"), Some(&8.0));
    assert_eq!(folded.get("slow"), Some(&8.0));
    assert_eq!(store.route_spends_of("n1").await.unwrap().len(), 0);
    let mut b = Batch::new();
    b.put_route_spend("fast", 9.0);
    store.write(b).await.unwrap();
    assert_eq!(store.route_spends().await.unwrap().get("fast"), Some(&9.0));
    assert_eq!(
        store.tenant_spend_of("acme", "m2026-12", s).await.unwrap(),
        Some(0.75)
    );
    assert_eq!(
        store
            .tenant_spend_of("acme", "d2026-12-07", t)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .tenant_spend_of("globex", "m2026-12", s)
            .await
            .unwrap(),
        None
    );
}

async fn records_survive_reopen_in_order(place: Place) {
    let s = SessionId::new();
    {
        let store = open(&place, Durability::Sync);
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
    let store = open(&place, Durability::Sync);
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

async fn concurrent_writers_share_group_commits(place: Place) {
    let store = open(&place, Durability::Sync);
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

async fn unsynced_batches_never_fsync_and_buffered_mode_never_fsyncs(place: Place) {
    let store = open(&place, Durability::Sync);
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

    let place = place.another();
    let store = open(&place, Durability::Buffered);
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

async fn listing_is_paged_and_filtered_by_the_status_index(place: Place) {
    let store = open(&place, Durability::Buffered);
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

async fn scans_go_either_way_filter_by_route_and_flow_and_stop_at_their_cap(place: Place) {
    let store = open(&place, Durability::Buffered);
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

async fn deleting_a_session_removes_every_trace_and_nothing_else(place: Place) {
    let store = open(&place, Durability::Sync);
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

async fn a_corrupt_record_is_reported_with_session_and_seq(place: Place) {
    let store = open(&place, Durability::Sync);
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
    let store = Store::open(StoreOptions::new(dir.path().join("db"), Durability::Sync)).unwrap();
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
    let copy = Store::open(StoreOptions::new(dir.path().join("cp"), Durability::Sync)).unwrap();
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

async fn gates_page_stably_by_any_filter_and_deadlines_are_found(place: Place) {
    use GateStatus::*;
    use gates::GateFilter;
    let store = open(&place, Durability::Buffered);
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

async fn a_tenants_and_a_groups_queue_come_from_their_own_entries_in_queue_order(place: Place) {
    use GateStatus::*;
    use gates::{QueuePos, QueueScope};
    let store = open(&place, Durability::Buffered);
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
    let mut unmark = Batch::new();
    unmark.push(Op::Delete {
        cf: CF_INDEXES,
        key: keys::GATE_QUEUE_INDEX_MARKER.to_vec(),
    });
    store.write(unmark).await.unwrap();
    drop(store);
    let store = open(&place, Durability::Buffered);
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
    let store = Store::open(StoreOptions::new(dir.path(), Durability::Sync)).unwrap();
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

/// A small deterministic generator (xorshift64*), so that a failure
/// repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Keys of 0 to 4 bytes from {0x00, 0x01, 0x7f, 0xff}: short keys,
    /// prefixes of each other, and the bytes where signed or text orders
    /// would differ from unsigned byte order.
    fn key(&mut self) -> Vec<u8> {
        let len = self.below(5) as usize;
        (0..len)
            .map(|_| [0x00, 0x01, 0x7f, 0xff][self.below(4) as usize])
            .collect()
    }
}

/// Every key of `cf` from `seek`, as a `Vec`.
fn walk_all(db: &dyn Engine, cf: &'static str, seek: Seek<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    db.walk(cf, seek)
        .unwrap()
        .map(|item| {
            let (k, v) = item.unwrap();
            (k.into_vec(), v.into_vec())
        })
        .collect()
}

/// The contract, checked by difference: the same random groups of puts,
/// deletes and range deletes applied to RocksDB and to PostgreSQL leave
/// the same keys, and every walk — from either end, from any key, either
/// way, across page boundaries — yields the same entries in the same
/// order.
#[test]
fn both_engines_keep_the_same_keys_in_the_same_order() {
    let rocks_dir = tempfile::tempdir().unwrap();
    let rocks = rocks::RocksEngine::open(rocks_dir.path(), 8 << 20, 8 << 20).unwrap();
    let pg = postgres::PgEngine::open(postgres::PgOptions::new(
        Place::postgres().postgres.unwrap(),
    ))
    .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..60 {
        let mut groups: Vec<Vec<Op>> = Vec::new();
        for _ in 0..=rng.below(3) {
            let mut ops = Vec::new();
            for _ in 0..rng.below(40) {
                let cf = [CF_INDEXES, CF_JOURNAL][rng.below(2) as usize];
                ops.push(match rng.below(10) {
                    0..=6 => Op::Put {
                        cf,
                        key: rng.key(),
                        value: round.to_string().into_bytes(),
                    },
                    7 | 8 => Op::Delete { cf, key: rng.key() },
                    _ => {
                        let (a, b) = (rng.key(), rng.key());
                        Op::DeleteRange {
                            cf,
                            from: a.clone().min(b.clone()),
                            to: a.max(b),
                        }
                    }
                });
            }
            groups.push(ops);
        }
        let groups: Vec<&[Op]> = groups.iter().map(|g| &g[..]).collect();
        let sync = rng.below(2) == 0;
        rocks.write(&groups, sync).unwrap();
        pg.write(&groups, sync).unwrap();
    }
    // Enough keys under one prefix to need several pages of a walk.
    let many: Vec<Op> = (0..3000u32)
        .map(|i| Op::Put {
            cf: CF_JOURNAL,
            key: [&[0x42u8][..], &i.to_be_bytes()].concat(),
            value: vec![1; (i % 7) as usize],
        })
        .collect();
    rocks.write(&[&many], true).unwrap();
    pg.write(&[&many], true).unwrap();

    for cf in [CF_INDEXES, CF_JOURNAL] {
        let all = walk_all(&rocks, cf, Seek::First);
        assert!(!all.is_empty());
        assert_eq!(all, walk_all(&pg, cf, Seek::First), "{cf} from the start");
        assert_eq!(
            walk_all(&rocks, cf, Seek::Last),
            walk_all(&pg, cf, Seek::Last),
            "{cf} from the end"
        );
        for _ in 0..40 {
            let mut at = rng.key();
            if rng.below(3) == 0 {
                at = [&[0x42u8][..], &(rng.below(3200) as u32).to_be_bytes()].concat();
            }
            for dir in [Dir::Forward, Dir::Reverse] {
                assert_eq!(
                    walk_all(&rocks, cf, Seek::At(&at, dir)),
                    walk_all(&pg, cf, Seek::At(&at, dir)),
                    "{cf} from {at:?} {dir:?}"
                );
            }
            assert_eq!(rocks.get(cf, &at).unwrap(), pg.get(cf, &at).unwrap());
        }
        let prefix = [0x42u8];
        let a: Vec<_> = (&rocks as &dyn Engine)
            .walk_prefix(cf, &prefix)
            .unwrap()
            .map(|i| i.unwrap().0)
            .collect();
        let b: Vec<_> = (&pg as &dyn Engine)
            .walk_prefix(cf, &prefix)
            .unwrap()
            .map(|i| i.unwrap().0)
            .collect();
        assert_eq!(a, b);
    }
}

#[test]
fn a_second_writer_on_one_database_is_refused_by_name() {
    let url = Place::postgres().postgres.unwrap();
    let mut options = postgres::PgOptions::new(url.clone());
    options.connect_timeout = std::time::Duration::from_millis(300);
    let first = postgres::PgEngine::open(options.clone()).unwrap();
    assert_eq!(first.schema_version().unwrap(), 5);
    let err = postgres::PgEngine::open(options.clone()).unwrap_err();
    assert!(
        err.to_string().contains("another Baton node is writing"),
        "{err}"
    );
    drop(first);
    // Once the first is gone, the database is free again.
    postgres::PgEngine::open(options).unwrap();
}

#[test]
fn a_bad_url_is_a_clear_error_not_a_panic() {
    let err =
        postgres::PgEngine::open(postgres::PgOptions::new("postgresql://a:b@[::1")).unwrap_err();
    assert!(err.to_string().contains("[store] url"), "{err}");
    let mut refused = postgres::PgOptions::new("postgresql://baton@127.0.0.1:1/x");
    refused.connect_timeout = std::time::Duration::from_millis(300);
    let err = postgres::PgEngine::open(refused).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert_eq!(err.code(), baton_types::ErrorCode::Unavailable);
}

/// The database goes away under a store and comes back: writes fail
/// (named, `Unavailable`) meanwhile and nothing acknowledged is lost; the
/// store writes and reads again by itself once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_postgres_rides_out_a_database_restart() {
    let server = baton_pgtest::PgServer::start().unwrap();
    let url = server.database().unwrap();
    let place = Place {
        dir: tempfile::tempdir().unwrap(),
        postgres: Some(url),
    };
    let store = open(&place, Durability::Sync);
    let s = SessionId::new();
    let cancelled = |turn| EventKind::TurnCancelled {
        by: String::new(),
        turn,
    };
    let mut acked = 0u64;
    for seq in 1..=20 {
        let mut b = Batch::new();
        b.append(&s, seq, seq, &cancelled(seq));
        store.write(b).await.unwrap();
        acked = seq;
    }
    server.stop().unwrap();
    let mut b = Batch::new();
    b.append(&s, 21, 21, &cancelled(21));
    let err = store.write(b).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(store.write_failing().is_some());
    let err = store.read_journal(s, 0, 100).await.unwrap_err();
    assert_eq!(err.code(), baton_types::ErrorCode::Unavailable, "{err}");

    server.restart().unwrap();
    // The first write after the restart may meet a connection the server
    // closed; the store reconnects, and the next one goes through.
    let mut written = false;
    for _ in 0..50 {
        let mut b = Batch::new();
        b.append(&s, 21, 21, &cancelled(21));
        if store.write(b).await.is_ok() {
            written = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(written, "the store did not write again: {}", server.log());
    assert!(store.write_failing().is_none());
    let mut events = Vec::new();
    for _ in 0..50 {
        match store.read_journal(s, 0, 100).await {
            Ok(e) => {
                events = e;
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=acked + 1).collect::<Vec<_>>());
}

/// `baton migrate-store`'s copy: everything of a RocksDB store arrives in
/// PostgreSQL and reads the same through the store; a database that
/// already holds data is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rocksdb_store_copies_into_postgres_and_reads_the_same() {
    let from = Place::rocksdb();
    let store = open(&from, Durability::Sync);
    let mut ids = Vec::new();
    for i in 0..30u64 {
        let s = SessionId::new();
        let mut b = Batch::new();
        b.put_meta(&s, &meta(SessionStatus::Idle), None);
        b.append(
            &s,
            1,
            i,
            &EventKind::TurnAccepted {
                by: String::new(),
                turn: 1,
                // Some out of line, in the payloads key space.
                message: Message::user("x".repeat(if i % 3 == 0 { 20_000 } else { 10 })),
                review: false,
            },
        );
        store.write(b).await.unwrap();
        ids.push(s);
    }
    store.close();
    drop(store);

    let to = Place::postgres();
    let (dir, url) = (from.dir.path().to_path_buf(), to.postgres.clone().unwrap());
    let copied = tokio::task::spawn_blocking(move || {
        let source = rocks::RocksEngine::open(&dir, 8 << 20, 8 << 20).unwrap();
        let dest = postgres::PgEngine::open(postgres::PgOptions::new(url)).unwrap();
        let copied = migrate::copy_store(&source, &dest, |_, _, _| {}).unwrap();
        // Again: the destination holds data now.
        let err = migrate::copy_store(&source, &dest, |_, _, _| {}).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        copied
    })
    .await
    .unwrap();
    let by_space: BTreeMap<&str, u64> = copied.key_spaces.iter().map(|k| (k.0, k.1)).collect();
    assert_eq!(by_space[CF_SESSIONS], 30);
    assert_eq!(by_space[CF_JOURNAL], 30);
    assert_eq!(by_space[CF_PAYLOADS], 10);

    let store = open(&to, Durability::Sync);
    assert_eq!(store.count_sessions().await.unwrap(), 30);
    for s in &ids {
        let events = store.read_journal(*s, 0, 10).await.unwrap();
        assert_eq!(events.len(), 1);
    }
    let page = store.list_sessions(None, None, 100).await.unwrap();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(page.sessions.iter().map(|p| p.0).collect::<Vec<_>>(), want);
}

fn node(url: &str, id: &str, lease_ms: u64, heartbeat_ms: u64) -> postgres::PgOptions {
    let mut options = postgres::PgOptions::new(url.to_string());
    options.connect_timeout = std::time::Duration::from_millis(500);
    options.node.id = id.into();
    options.node.grpc_addr = format!("{id}.grpc:1");
    options.node.lease = std::time::Duration::from_millis(lease_ms);
    options.node.heartbeat = std::time::Duration::from_millis(heartbeat_ms);
    options
}

fn put(n: u8) -> Op {
    Op::Put {
        cf: CF_INDEXES,
        key: vec![n],
        value: vec![n],
    }
}

/// The writer lease fences writes: a writer whose connection broke writes
/// again while its lease holds; once its lease lapsed its writes are
/// refused ("lapsed"), and once another node took the lease they are
/// refused for good ("another node took it"), whatever the old writer
/// believes — the paused-node case, with the pause played by a lease
/// that is not renewed.
#[test]
fn a_writer_is_fenced_by_its_lease() {
    let url = Place::postgres().postgres.unwrap();
    let db = baton_pgtest::PgServer::database_name(&url);
    let server = PG.get().unwrap().as_ref().unwrap();
    // A renews rarely: the test decides when its lease ends.
    let a = postgres::PgEngine::open(node(&url, "a", 60_000, 60_000)).unwrap();
    assert_eq!(a.schema_version().unwrap(), 5);
    a.write(&[&[put(1)]], true).unwrap();

    // Its writer connection cut: A reconnects and writes on.
    server
        .psql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{db}' AND pid <> pg_backend_pid() \
             AND query NOT LIKE '%baton_nodes%' AND query NOT LIKE '%pg_try_advisory_lock%'"
        ))
        .unwrap();
    let mut wrote = false;
    for _ in 0..20 {
        if a.write(&[&[put(2)]], true).is_ok() {
            wrote = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        wrote,
        "the writer did not come back after its connection was cut"
    );

    // The lease lapses (A "paused"): refused, and nothing written.
    server
        .psql_in(
            &db,
            "UPDATE baton_writer SET expires_at = clock_timestamp() - interval '1 second'",
        )
        .unwrap();
    let err = a.write(&[&[put(3)]], true).unwrap_err();
    assert!(err.to_string().contains("lapsed"), "{err}");
    assert_eq!(err.code(), baton_types::ErrorCode::Unavailable);
    assert_eq!(a.get(CF_INDEXES, &[3]).unwrap(), None);

    // B takes the expired lease; A is refused for good, B writes.
    let b = postgres::PgEngine::open(node(&url, "b", 5_000, 200)).unwrap();
    assert!(b.node_status().epoch > a.node_status().epoch);
    for _ in 0..3 {
        let err = a.write(&[&[put(4)]], true).unwrap_err();
        assert!(err.to_string().contains("another node took it"), "{err}");
        assert!(err.to_string().contains("fenced"), "{err}");
    }
    b.write(&[&[put(5)]], true).unwrap();
    assert_eq!(b.get(CF_INDEXES, &[4]).unwrap(), None);
    assert_eq!(b.get(CF_INDEXES, &[5]).unwrap(), Some(vec![5]));
    assert_eq!(b.get(CF_INDEXES, &[2]).unwrap(), Some(vec![2]));
    // A's heartbeat finds the lease gone and says so.
    drop(a);
    drop(b);
}

/// Membership: a standby waits for the lease while the holder lives (the
/// holder's renewals keep it), takes it the moment the holder leaves, and
/// the directory shows who holds it and which nodes are alive.
#[test]
fn a_standby_takes_over_when_the_holder_leaves() {
    let url = Place::postgres().postgres.unwrap();
    let a = postgres::PgEngine::open(node(&url, "a", 600, 100)).unwrap();
    let mut dir = member::Directory::new(postgres::PgOptions::new(url.clone()));
    let h = dir.holder().unwrap().unwrap();
    assert_eq!(
        (h.node_id.as_str(), h.grpc_addr.as_str()),
        ("a", "a.grpc:1")
    );
    // Without waiting, B is refused naming the holder.
    let err = postgres::PgEngine::open(node(&url, "b", 600, 100)).unwrap_err();
    assert!(err.to_string().contains("\"a\" at \"a.grpc:1\""), "{err}");
    let standby = {
        let mut o = node(&url, "b", 600, 100);
        o.node.wait_for_lease = true;
        std::thread::spawn(move || postgres::PgEngine::open(o))
    };
    // Several leases long: A renews, B waits.
    std::thread::sleep(std::time::Duration::from_millis(2_000));
    assert!(
        !standby.is_finished(),
        "the standby took a lease that was renewed"
    );
    let nodes = dir.nodes().unwrap();
    let ids: Vec<_> = nodes
        .iter()
        .map(|n| (n.node_id.as_str(), n.live, n.holds_lease.is_some()))
        .collect();
    assert_eq!(ids, [("a", true, true), ("b", true, false)]);
    a.write(&[&[put(1)]], true).unwrap();
    let epoch_a = a.node_status().epoch;
    let left = std::time::Instant::now();
    drop(a);
    let b = standby.join().unwrap().unwrap();
    assert!(
        left.elapsed() < std::time::Duration::from_millis(1_500),
        "{:?}",
        left.elapsed()
    );
    assert_eq!(b.node_status().epoch, epoch_a + 1);
    assert_eq!(dir.holder().unwrap().unwrap().node_id, "b");
    b.write(&[&[put(2)]], true).unwrap();
    let nodes = dir.nodes().unwrap();
    let ids: Vec<_> = nodes
        .iter()
        .map(|n| (n.node_id.as_str(), n.live, n.holds_lease.is_some()))
        .collect();
    assert_eq!(ids, [("a", false, false), ("b", true, true)]);

    // A node gone for more than a day leaves the listing when another
    // starts; a live one stays however old its row.
    let server = PG.get().unwrap().as_ref().unwrap();
    server
        .psql_in(
            &baton_pgtest::PgServer::database_name(&url),
            "UPDATE baton_nodes SET heartbeat_at = now() - interval '2 days'",
        )
        .unwrap();
    let err = postgres::PgEngine::open(node(&url, "c", 600, 100)).unwrap_err();
    assert!(err.to_string().contains("\"b\""), "{err}");
    let ids: Vec<_> = dir
        .nodes()
        .unwrap()
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert_eq!(ids, ["b", "c"]);
    drop(b);
}

/// TLS to the database: with `sslmode=require` and the server's CA the
/// connection is encrypted (the server says so); without the CA the
/// certificate is refused, naming why; a plain server refuses `require`.
#[test]
fn tls_to_the_database_is_verified_and_required_when_asked() {
    let server = baton_pgtest::PgServer::start_with_tls().unwrap();
    let url = format!("{}&sslmode=require", server.database().unwrap());
    let mut options = postgres::PgOptions::new(url.clone());
    options.ca_file = Some(server.certificate());
    let engine = postgres::PgEngine::open(options).unwrap();
    assert!(engine.connection_is_encrypted().unwrap());
    drop(engine);

    let err = postgres::PgEngine::open(postgres::PgOptions::new(url)).unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    let plain = Place::postgres().postgres.unwrap();
    let err =
        postgres::PgEngine::open(postgres::PgOptions::new(format!("{plain}&sslmode=require")))
            .unwrap_err();
    assert!(
        err.to_string().contains("TLS") || err.to_string().contains("SSL"),
        "{err}"
    );
}

const M1: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const M2: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn master(hex: &str) -> seal::MasterKey {
    seal::MasterKey::from_hex(hex).unwrap()
}

/// A session of `subject` with one sealed turn saying `text`.
async fn sealed_session(store: &Store, subject: &str, text: &str) -> SessionId {
    let ring = store.keyring().unwrap();
    let s = SessionId::new();
    let mut b = Batch::new();
    b.seal_with(Some(ring.for_subject(subject).unwrap()));
    b.put_meta(&s, &meta(SessionStatus::Idle), None);
    b.append(
        &s,
        1,
        10,
        &EventKind::TurnAccepted {
            turn: 1,
            message: Message::user(text),
            review: false,
            by: String::new(),
        },
    );
    store.write(b).await.unwrap();
    s
}

fn with_ring(place: &Place, ring: &Arc<seal::Keyring>) -> Result<Store> {
    let mut opts = place.options(Durability::Sync);
    opts.keyring = Some(ring.clone());
    Store::open(opts)
}

/// The bytes of a table's current data file (after a checkpoint).
fn table_file(server: &baton_pgtest::PgServer, db: &str, table: &str) -> (String, Vec<u8>) {
    server.psql_in(db, "CHECKPOINT").unwrap();
    let rel = server
        .psql_in(db, &format!("SELECT pg_relation_filepath('{table}')"))
        .unwrap();
    let rel = rel.trim().to_string();
    let bytes = std::fs::read(server.data_dir().join(&rel)).unwrap_or_default();
    (rel, bytes)
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Subject keys kept in the database: another process on the same
/// database opens what the first sealed; an erasure there destroys the
/// key in the table's files too; a rotation wraps them again; a RocksDB
/// store refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_keys_in_the_database_are_shared_and_erased_there() {
    let place = Place::postgres();
    let url = place.postgres.clone().unwrap();
    let db = baton_pgtest::PgServer::database_name(&url);
    let server = PG.get().unwrap().as_ref().unwrap();

    let ring = Arc::new(seal::Keyring::in_database(master(M1), None));
    assert!(ring.for_subject("cust-1").is_err(), "no store open yet");
    let store = with_ring(&place, &ring).unwrap();
    let a = sealed_session(&store, "cust-1", "MARKER-one").await;
    let b = sealed_session(&store, "cust-2", "MARKER-two").await;
    store.close();
    drop(store);
    // The store closed: the ring no longer reaches the database.
    assert!(ring.by_id(&[0u8; 16]).is_err());

    // Another node (a new process: a new ring, same master key) reads both.
    let ring = Arc::new(seal::Keyring::in_database(master(M1), None));
    let store = with_ring(&place, &ring).unwrap();
    for (s, text) in [(a, "MARKER-one"), (b, "MARKER-two")] {
        let events = store.read_journal(s, 0, 10).await.unwrap();
        assert!(format!("{:?}", events[0].kind).contains(text));
    }
    let wrapped = |subject: &str| {
        let hash: String = seal::subject_hash(subject)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        server
            .psql_in(
                &db,
                &format!(
                    "SELECT encode(value, 'hex') FROM baton_keys \
                     WHERE key >= 'k/'::bytea AND key < 'k0'::bytea \
                     AND substring(value from 1 for 32) = '\\x{hash}'::bytea"
                ),
            )
            .unwrap()
            .trim()
            .to_string()
    };
    let key_one = unhex(&wrapped("cust-1"));
    assert_eq!(
        key_one.len(),
        32 + 12 + 32 + 16,
        "one wrapped key for cust-1"
    );
    let (before, file) = table_file(server, &db, "baton_keys");
    assert!(
        file.windows(key_one.len()).any(|w| w == key_one),
        "the wrapped key is in the table's file before the erasure"
    );

    // Erased on this node: unreadable, and gone from the table's files.
    assert!(ring.erase("cust-1").unwrap());
    assert!(matches!(
        store.read_journal(a, 0, 10).await,
        Err(Error::Erased(_))
    ));
    assert!(wrapped("cust-1").is_empty());
    let (after, file) = table_file(server, &db, "baton_keys");
    assert_ne!(before, after, "the table was rewritten");
    let old = std::fs::read(server.data_dir().join(&before)).unwrap_or_default();
    for bytes in [&file, &old] {
        assert!(
            !bytes.windows(key_one.len()).any(|w| w == key_one),
            "an erased key is left in a data file"
        );
    }
    store.close();
    drop(store);

    // A third node sees the erasure; a rotation wraps the keys again.
    let ring = Arc::new(seal::Keyring::in_database(master(M2), Some(master(M1))));
    let store = with_ring(&place, &ring).unwrap();
    assert!(ring.is_erased("cust-1").unwrap());
    assert!(matches!(
        store.read_journal(a, 0, 10).await,
        Err(Error::Erased(_))
    ));
    assert_eq!(store.read_journal(b, 0, 10).await.unwrap().len(), 1);
    store.close();
    drop(store);
    let ring = Arc::new(seal::Keyring::in_database(master(M1), None));
    let err = with_ring(&place, &ring).unwrap_err();
    assert!(
        err.to_string()
            .contains("does not open under the master key"),
        "{err}"
    );

    // Keys in the database need the store there.
    let ring = Arc::new(seal::Keyring::in_database(master(M1), None));
    let err = with_ring(&Place::rocksdb(), &ring).unwrap_err();
    assert!(
        err.to_string().contains("need the store on PostgreSQL"),
        "{err}"
    );
}

/// `migrate-store` with sealed data: the store and its keystore copied
/// into PostgreSQL read there with the same master key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_store_and_its_keystore_move_into_postgres() {
    let from = Place::rocksdb();
    let keys = tempfile::tempdir().unwrap();
    let ring = Arc::new(seal::Keyring::open(keys.path(), master(M1), None).unwrap());
    let store = with_ring(&from, &ring).unwrap();
    let a = sealed_session(&store, "cust-1", "MARKER-moved").await;
    store.close();
    drop(store);
    drop(ring);

    let to = Place::postgres();
    let (dir, url, keys_dir) = (
        from.dir.path().to_path_buf(),
        to.postgres.clone().unwrap(),
        keys.path().to_path_buf(),
    );
    let n = tokio::task::spawn_blocking(move || {
        let source = rocks::RocksEngine::open(&dir, 8 << 20, 8 << 20).unwrap();
        let dest = postgres::PgEngine::open(postgres::PgOptions::new(url)).unwrap();
        migrate::copy_store(&source, &dest, |_, _, _| {}).unwrap();
        let n = seal::copy_keystore(&keys_dir, &dest).unwrap();
        let err = seal::copy_keystore(&keys_dir, &dest).unwrap_err();
        assert!(
            err.to_string().contains("already holds subject keys"),
            "{err}"
        );
        n
    })
    .await
    .unwrap();
    assert_eq!(n, 2, "the subject's key list and its wrapped key");
    let ring = Arc::new(seal::Keyring::in_database(master(M1), None));
    let store = with_ring(&to, &ring).unwrap();
    let events = store.read_journal(a, 0, 10).await.unwrap();
    assert!(format!("{:?}", events[0].kind).contains("MARKER-moved"));
    assert!(!ring.is_erased("cust-1").unwrap());
}

fn owning(url: &str, id: &str, lease_ms: u64, heartbeat_ms: u64) -> postgres::PgOptions {
    let mut options = node(url, id, lease_ms, heartbeat_ms);
    options.node.ownership = postgres::Ownership::Sessions;
    options
}

fn owned(s: &SessionId) -> Op {
    Op::Owned {
        session: s.as_bytes().to_vec(),
    }
}

/// A claim, the fence of every group and a session's release find
/// sessions by the primary key of `baton_owners`, even with the plans a connection caches
/// while the table is nearly empty (a node's first writes). Such a plan
/// used to take `baton_owners_by_node` for `node_id = me AND epoch = e`:
/// every group then scanned every session its node owned. The plans are
/// read from `auto_explain`, with generic plans forced.
#[test]
fn the_fence_and_a_release_look_sessions_up_by_their_key() {
    let url = Place::postgres().postgres.unwrap();
    let options = owning(&url, "a", 60_000, 60_000);
    let a = postgres::PgEngine::open(options.clone()).unwrap();
    assert_eq!(a.schema_version().unwrap(), 5);
    let plans = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut config: ::postgres::Config = url.parse().unwrap();
    config.notice_callback({
        let plans = plans.clone();
        move |n| plans.lock().unwrap().push(n.message().to_string())
    });
    let mut c = config.connect(::postgres::NoTls).unwrap();
    c.batch_execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; \
         SET auto_explain.log_nested_statements = on; SET client_min_messages = log; \
         SET plan_cache_mode = force_generic_plan",
    )
    .unwrap();
    let epoch: i64 = c
        .query_one("SELECT epoch FROM baton_nodes WHERE node_id = 'a'", &[])
        .unwrap()
        .get(0);
    let s = SessionId::new();
    assert_eq!(
        owners::claim(&mut c, owners::CLAIM, &options.node, epoch, s.as_bytes()).unwrap(),
        owners::Claim::Ours
    );
    plans.lock().unwrap().clear();
    assert_eq!(
        owners::claim(&mut c, owners::CLAIM, &options.node, epoch, s.as_bytes()).unwrap(),
        owners::Claim::Ours,
        "claimed again"
    );
    let ids: Vec<&[u8]> = vec![s.as_bytes()];
    c.execute("SELECT baton_fence_owned('a', $1, $2)", &[&epoch, &ids])
        .unwrap();
    owners::release(&mut c, owners::RELEASE, &options.node, epoch, s.as_bytes()).unwrap();
    let plans = plans.lock().unwrap().join("\n");
    assert!(
        plans.matches("baton_owners_pkey").count() >= 3,
        "the claim's, the fence's and the release's plans: {plans}"
    );
    assert!(!plans.contains("baton_owners_by_node"), "{plans}");
    assert_eq!(a.owner(s.as_bytes()).unwrap(), None, "released");
}

/// What survivors recover is found from node rows: a live node's rows at
/// an epoch that is over, and (migration 5) the rows of a node whose row an
/// earlier version dropped; sessions before other keys, at most `limit`.
#[test]
fn orphans_are_found_from_node_rows_and_old_epochs() {
    let url = Place::postgres().postgres.unwrap();
    let a = postgres::PgEngine::open(owning(&url, "a", 60_000, 200)).unwrap();
    let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let (s1, s2, s3) = (SessionId::new(), SessionId::new(), SessionId::new());
    for s in [&s1, &s3] {
        assert_eq!(a.claim(s.as_bytes()).unwrap(), owners::Claim::Ours);
    }
    assert!(a.orphaned(10).unwrap().is_empty());
    // s1's row is at an epoch of A's that is over.
    c.execute(
        "UPDATE baton_owners SET epoch = epoch - 1 WHERE session = $1",
        &[&s1.as_bytes().as_slice()],
    )
    .unwrap();
    assert_eq!(a.orphaned(10).unwrap(), [s1.as_bytes().to_vec()]);
    // A node row dropped under its owner rows (a session and a run key),
    // and the database taken back to schema 4.
    let run_key: &[u8] = b"r/some-run";
    for key in [s2.as_bytes().as_slice(), run_key] {
        c.execute(
            "INSERT INTO baton_owners (session, node_id, epoch) VALUES ($1, 'ghost', 3)",
            &[&key],
        )
        .unwrap();
    }
    c.batch_execute("DELETE FROM baton_schema WHERE version = 5")
        .unwrap();
    assert_eq!(
        a.orphaned(10).unwrap(),
        [s1.as_bytes().to_vec()],
        "not found before 5"
    );
    drop(a);
    let a = postgres::PgEngine::open(owning(&url, "a", 60_000, 200)).unwrap();
    assert_eq!(a.schema_version().unwrap(), 5);
    // A came back at a new epoch: s3, of its last one, is over too.
    let mut sessions: Vec<Vec<u8>> = [&s1, &s2, &s3]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    sessions.sort();
    let mut want = sessions.clone();
    want.push(run_key.to_vec());
    assert_eq!(a.orphaned(10).unwrap(), want, "sessions first");
    assert_eq!(a.orphaned(3).unwrap(), sessions);
}

/// The backend holding this node's lock (its member connection) is cut:
/// for the database, its process died.
fn kill_node_connection(server: &baton_pgtest::PgServer, db: &str, id: &str) {
    server
        .psql_in(
            db,
            &format!(
                "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l \
                 WHERE l.locktype = 'advisory' AND l.classid::int8 = 7424013 \
                 AND l.objid::int8 = {}",
                member::node_key(id)
            ),
        )
        .unwrap();
}

/// Sessions owned one node each: claims go to the first live claimer;
/// writes naming a session land only on its owner's node (the whole group
/// refused otherwise, on the one-statement path and the transaction path
/// alike); a release frees a session at once; a node whose lease lapsed
/// is refused, fenced by the first claim of one of its sessions, and
/// never writes or claims again; a dead process's sessions are taken
/// after two heartbeats; a clean leave orphans everything at once; and the two
/// ownership modes never share a database.
#[test]
fn nodes_own_sessions_one_by_one_and_every_write_is_fenced_by_its_owner() {
    use owners::Claim;
    let url = Place::postgres().postgres.unwrap();
    let db = baton_pgtest::PgServer::database_name(&url);
    let server = PG.get().unwrap().as_ref().unwrap();
    // A renews rarely: the test decides when its lease ends.
    let a = postgres::PgEngine::open(owning(&url, "a", 60_000, 60_000)).unwrap();
    let b = postgres::PgEngine::open(owning(&url, "b", 5_000, 200)).unwrap();
    assert_eq!(a.schema_version().unwrap(), 5);
    let (s1, s2) = (SessionId::new(), SessionId::new());
    assert_eq!(a.claim(s1.as_bytes()).unwrap(), Claim::Ours);
    assert_eq!(
        a.claim(s1.as_bytes()).unwrap(),
        Claim::Ours,
        "claimed again"
    );
    match b.claim(s1.as_bytes()).unwrap() {
        Claim::Owned(o) => assert_eq!((&o.node_id[..], &o.grpc_addr[..]), ("a", "a.grpc:1")),
        Claim::Ours => panic!("two owners of one session"),
    }
    assert_eq!(b.claim(s2.as_bytes()).unwrap(), Claim::Ours);

    // Both write their own sessions at once.
    std::thread::scope(|scope| {
        for (engine, s, base) in [(&a, s1, 0u8), (&b, s2, 100u8)] {
            scope.spawn(move || {
                for i in 0..50u8 {
                    engine.write(&[&[owned(&s), put(base + i)]], true).unwrap();
                }
            });
        }
    });
    assert_eq!(a.get(CF_INDEXES, &[149]).unwrap(), Some(vec![149]));
    assert_eq!(b.get(CF_INDEXES, &[49]).unwrap(), Some(vec![49]));

    // Both claim the same new sessions at once: each has one owner.
    let racing: Vec<SessionId> = (0..40).map(|_| SessionId::new()).collect();
    let (got_a, got_b) = std::thread::scope(|scope| {
        let claims = |engine: &'static str| {
            let engine = if engine == "a" { &a } else { &b };
            let racing = &racing;
            scope.spawn(move || {
                racing
                    .iter()
                    .map(|s| engine.claim(s.as_bytes()).unwrap() == Claim::Ours)
                    .collect::<Vec<bool>>()
            })
        };
        let (ta, tb) = (claims("a"), claims("b"));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    for (i, (x, y)) in got_a.iter().zip(&got_b).enumerate() {
        assert!(x ^ y, "session {i}: claimed by a: {x}, by b: {y}");
    }
    for s in &racing {
        a.release(s.as_bytes()).unwrap();
        b.release(s.as_bytes()).unwrap();
    }
    assert_eq!(b.owner(racing[0].as_bytes()).unwrap(), None);

    // B naming A's session: the whole group is refused, its own session's
    // write too. A session nobody owns is refused the same way.
    let err = b
        .write(&[&[owned(&s2), put(200)], &[owned(&s1), put(201)]], true)
        .unwrap_err();
    assert!(matches!(err, Error::NotOwner(_)), "{err:?}");
    assert!(err.to_string().contains("(its owner: a)"), "{err}");
    assert_eq!(err.code(), baton_types::ErrorCode::Unavailable);
    assert_eq!(a.get(CF_INDEXES, &[200]).unwrap(), None);
    assert_eq!(a.get(CF_INDEXES, &[201]).unwrap(), None);
    let nobody = SessionId::new();
    let err = b.write(&[&[owned(&nobody), put(202)]], true).unwrap_err();
    assert!(err.to_string().contains("(its owner: none)"), "{err}");
    // A write naming no session passes on the node's lease alone.
    b.write(&[&[put(203)]], true).unwrap();
    // The transaction path (a range delete) is fenced the same way.
    let range = Op::DeleteRange {
        cf: CF_INDEXES,
        from: vec![0],
        to: vec![10],
    };
    let err = b.write(&[&[owned(&s1), range.clone()]], true).unwrap_err();
    assert!(matches!(err, Error::NotOwner(_)), "{err:?}");
    assert_eq!(a.get(CF_INDEXES, &[5]).unwrap(), Some(vec![5]));
    a.write(&[&[owned(&s1), range]], true).unwrap();
    assert_eq!(a.get(CF_INDEXES, &[5]).unwrap(), None);

    // A passivates s1: nobody owns it, and B claims it at once.
    a.release(s1.as_bytes()).unwrap();
    assert_eq!(b.owner(s1.as_bytes()).unwrap(), None);
    assert_eq!(b.claim(s1.as_bytes()).unwrap(), Claim::Ours);
    let err = a.write(&[&[owned(&s1), put(204)]], true).unwrap_err();
    assert!(err.to_string().contains("(its owner: b)"), "{err}");

    // A's lease lapses (A "paused"): its writes are refused; B's claim of
    // one of A's sessions fences A (its epoch raised) and takes it. The
    // database may have started less than two of B's heartbeats ago:
    // until then nobody takes anything.
    let s3 = SessionId::new();
    assert_eq!(a.claim(s3.as_bytes()).unwrap(), Claim::Ours);
    let epoch_a = a.node_status().epoch;
    server
        .psql_in(
            &db,
            "UPDATE baton_nodes SET lease_until = clock_timestamp() - interval '1 second' \
             WHERE node_id = 'a'",
        )
        .unwrap();
    let err = a.write(&[&[owned(&s3), put(205)]], true).unwrap_err();
    assert!(err.to_string().contains("lapsed"), "{err}");
    let mut taken = false;
    for _ in 0..40 {
        if b.claim(s3.as_bytes()).unwrap() == Claim::Ours {
            taken = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        taken,
        "the session of a node whose lease lapsed was not taken"
    );
    for _ in 0..2 {
        let err = a.write(&[&[put(206)]], true).unwrap_err();
        assert!(err.to_string().contains("was fenced"), "{err}");
    }
    let err = a.claim(SessionId::new().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("claims nothing"), "{err}");
    assert_eq!(a.get(CF_INDEXES, &[206]).unwrap(), None);
    let nodes = b.cluster_nodes().unwrap();
    let row = |id: &str| nodes.iter().find(|n| n.node_id == id).unwrap().clone();
    let fenced_at = row("a").epoch;
    assert!(fenced_at > epoch_a, "A was not fenced");
    assert_eq!((row("a").sessions_owned, row("b").sessions_owned), (0, 3));
    drop(a);

    // A's id comes back at a new epoch and owns nothing of before; B
    // still owns its sessions.
    let a = postgres::PgEngine::open(owning(&url, "a", 5_000, 200)).unwrap();
    assert!(a.node_status().epoch > fenced_at);
    assert!(matches!(a.claim(s1.as_bytes()).unwrap(), Claim::Owned(o) if o.node_id == "b"));

    // A process that died (its lock freed; no heartbeat since): after two
    // heartbeats its sessions are taken, without waiting for its lease.
    let c = postgres::PgEngine::open(owning(&url, "c", 60_000, 60_000)).unwrap();
    let s4 = SessionId::new();
    assert_eq!(c.claim(s4.as_bytes()).unwrap(), Claim::Ours);
    assert!(matches!(a.claim(s4.as_bytes()).unwrap(), Claim::Owned(o) if o.node_id == "c"));
    assert!(a.orphaned(100).unwrap().is_empty());
    kill_node_connection(server, &db, "c");
    let died = std::time::Instant::now();
    while a.orphaned(100).unwrap().is_empty() {
        assert!(
            died.elapsed() < std::time::Duration::from_secs(5),
            "not orphaned"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(a.orphaned(100).unwrap(), [s4.as_bytes().to_vec()]);
    assert_eq!(a.claim(s4.as_bytes()).unwrap(), Claim::Ours);
    assert!(a.orphaned(100).unwrap().is_empty());
    let err = c.write(&[&[owned(&s4), put(207)]], true).unwrap_err();
    assert!(err.to_string().contains("was fenced"), "{err}");
    drop(c);

    // B leaves cleanly: its lease ends, and what it owned is orphaned at
    // once (its rows stay, for survivors to resume what it held), and
    // claimed at once.
    drop(b);
    assert!(
        a.orphaned(100).unwrap().contains(&s2.as_bytes().to_vec()),
        "{:?}",
        a.orphaned(100)
    );
    assert_eq!(a.claim(s2.as_bytes()).unwrap(), Claim::Ours);
    a.write(&[&[owned(&s2), put(208)]], true).unwrap();

    // The two modes never share a database.
    let err = postgres::PgEngine::open(node(&url, "w", 5_000, 200)).unwrap_err();
    assert!(err.to_string().contains("one by one"), "{err}");
    drop(a);
    let w = postgres::PgEngine::open(node(&url, "w", 5_000, 200)).unwrap();
    let err = postgres::PgEngine::open(owning(&url, "d", 5_000, 200)).unwrap_err();
    assert!(err.to_string().contains("writer lease"), "{err}");
    drop(w);
}

/// A batch names to the fence each session and run it writes, once:
/// journal appends, metadata, snapshots, idempotency keys, copies, run
/// records and run journals; writes of no session (run indexes, API keys)
/// name nothing.
#[test]
fn a_batch_names_each_session_and_run_it_writes_once() {
    let (s, t) = (SessionId::new(), SessionId::new());
    let run = [9u8; 16];
    let mut b = Batch::new();
    let delta = EventKind::OutputDelta {
        turn: 1,
        attempt: 1,
        text: "x".into(),
    };
    for seq in 1..=3 {
        b.append(&s, seq, 0, &delta);
    }
    b.put_meta(&s, &meta(SessionStatus::Idle), None);
    b.put_snapshot(&t, vec![1]);
    b.put_run(&run, vec![1]);
    b.append_run(&run, 1, vec![2]);
    b.put_run_index(vec![1], vec![]);
    b.put_api_key("k", vec![]);
    let u = SessionId::new();
    b.put_idempotency("key", &s);
    b.drop_copy(&u);
    // An embeddings call's id, and audit confirmations, name nothing.
    let call = SessionId::new();
    b.put_tenant_spend("t", "2026-12", &call, 1.0);
    b.put_audit_record(&call, vec![1]);
    b.delete_audit_record(&call);
    b.put_audit_done(&call, 3);
    let named: Vec<&[u8]> = b
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Owned { session } => Some(&session[..]),
            _ => None,
        })
        .collect();
    let run_key = runs::owner_key(&run);
    assert_eq!(
        named,
        [
            &s.as_bytes()[..],
            &t.as_bytes()[..],
            &run_key[..],
            &u.as_bytes()[..]
        ]
    );
    assert_eq!(run_key.len(), 17);
}

/// Through the store's group commit: writes for a session owned elsewhere
/// fail alone (their group is written again request by request), the
/// owned sessions' writes in the same groups land, and the store is not
/// reported failing; a writer-mode standby is refused while a node owning
/// sessions is live, and a writer-mode node starts once they left.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_for_a_session_owned_elsewhere_fails_alone_and_the_modes_stay_apart() {
    use owners::Claim;
    let place = Place::postgres();
    let url = place.postgres.clone().unwrap();
    let mut options = place.options(Durability::Sync);
    options.postgres = Some(owning(&url, "a", 5_000, 200));
    let store = Store::open(options).unwrap();
    // The sync client never runs on an async worker.
    use tokio::task::block_in_place as blocking;
    let other = blocking(|| postgres::PgEngine::open(owning(&url, "b", 5_000, 200))).unwrap();
    let (mine, theirs) = (SessionId::new(), SessionId::new());
    assert_eq!(store.claim(mine).await.unwrap(), Claim::Ours);
    assert_eq!(
        blocking(|| other.claim(theirs.as_bytes())).unwrap(),
        Claim::Ours
    );
    let delta = EventKind::OutputDelta {
        turn: 1,
        attempt: 1,
        text: "x".into(),
    };
    // 200 writes at once (they share groups), one in ten for B's session.
    let writes: Vec<_> = (1..=200u64)
        .map(|seq| {
            let s = if seq % 10 == 0 { theirs } else { mine };
            let mut b = Batch::new();
            b.append(&s, seq, 0, &delta);
            (s, store.write(b))
        })
        .collect();
    for (s, w) in writes {
        match (s == mine, w.await) {
            (true, Ok(())) | (false, Err(Error::NotOwner(_))) => {}
            (owned, out) => panic!("owned: {owned}: {out:?}"),
        }
    }
    assert_eq!(store.write_failing(), None);
    let page = store.read_journal(mine, 0, 1000).await.unwrap();
    assert_eq!(page.len(), 180);
    assert!(store.read_journal(theirs, 0, 10).await.unwrap().is_empty());

    // A writer-mode standby is refused while nodes owning sessions live
    // (checked at every try to take the lease, under the mode lock).
    let standby = {
        let mut o = node(&url, "w", 5_000, 200);
        o.node.wait_for_lease = true;
        tokio::task::spawn_blocking(move || postgres::PgEngine::open(o).map(drop))
    };
    let err = standby.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("one by one"), "{err}");
    store.release(mine).await.unwrap();
    store.close();
    blocking(|| {
        drop(store);
        drop(other);
    });
    let w = blocking(|| postgres::PgEngine::open(node(&url, "w", 5_000, 200))).unwrap();
    blocking(|| {
        w.write(&[&[put(1)]], true).unwrap();
        drop(w);
    });
}

/// The node process [`a_paused_owner_is_fenced_when_it_wakes`] starts: it
/// claims one session and appends to it as fast as it can, printing each
/// acknowledged seq, until a write is refused. Does nothing when run by
/// itself.
#[test]
#[ignore = "a child process of a_paused_owner_is_fenced_when_it_wakes"]
fn owner_child_process() {
    let (Ok(url), Ok(session)) = (
        std::env::var("BATON_OWNER_CHILD_URL"),
        std::env::var("BATON_OWNER_CHILD_SESSION"),
    ) else {
        return;
    };
    let session: SessionId = session.parse().unwrap();
    let engine = postgres::PgEngine::open(owning(&url, "a", 1_000, 200)).unwrap();
    assert_eq!(
        engine.claim(session.as_bytes()).unwrap(),
        owners::Claim::Ours
    );
    println!("claimed");
    for seq in 1.. {
        let mut b = Batch::new();
        b.append(&session, seq, 0, &child_record("a"));
        match engine.write(&[&b.ops[..]], true) {
            Ok(()) => println!("acked {seq}"),
            Err(e) => {
                println!("refused {seq}: {e}");
                return;
            }
        }
    }
}

fn child_record(by: &str) -> EventKind {
    EventKind::OutputDelta {
        turn: 1,
        attempt: 1,
        text: by.into(),
    }
}

/// A real node process owning a session is paused (SIGSTOP) mid-writes
/// past its lease: another node claims the session (fencing it), reads
/// every acknowledged record and appends its own; resumed (SIGCONT), the
/// paused process's next write is refused, and nothing of it lands — no
/// record of the new owner is overwritten.
/// A node process running [`owner_child_process`] on `session`: its
/// output lines, and signals to it (killed when dropped).
struct OwnerChild {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// The last seq it printed as acknowledged.
    last: u64,
}

impl OwnerChild {
    fn start(url: &str, session: SessionId) -> OwnerChild {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::owner_child_process",
                "--ignored",
                "--nocapture",
            ])
            .env("BATON_OWNER_CHILD_URL", url)
            .env("BATON_OWNER_CHILD_SESSION", session.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        OwnerChild {
            child,
            lines,
            last: 0,
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Wait until it acknowledged `n` writes.
    fn wait_for(&mut self, n: u64) {
        while self.last < n {
            let line = self
                .lines
                .recv_timeout(std::time::Duration::from_secs(20))
                .expect("the child stopped writing");
            self.last = acked(&line).unwrap_or(self.last);
        }
    }

    /// Take in what it printed until it fell silent.
    fn drain(&mut self) {
        while let Ok(line) = self
            .lines
            .recv_timeout(std::time::Duration::from_millis(300))
        {
            self.last = acked(&line).unwrap_or(self.last);
        }
    }
}

impl Drop for OwnerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn acked(line: &str) -> Option<u64> {
    line.strip_prefix("acked ").and_then(|n| n.parse().ok())
}

/// `session`'s journal as (seq, writer) pairs.
fn owner_journal(engine: &postgres::PgEngine, session: SessionId) -> Vec<(u64, String)> {
    read_journal_blocking(engine, None, session, 0, u64::MAX, 100_000)
        .unwrap()
        .into_iter()
        .map(|e| match e.kind {
            EventKind::OutputDelta { text, .. } => (e.seq, text),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Claim `session` on `engine` until it is ours: the time it took.
fn claim_until_ours(engine: &postgres::PgEngine, session: SessionId) -> std::time::Duration {
    let since = std::time::Instant::now();
    while engine.claim(session.as_bytes()).unwrap() != owners::Claim::Ours {
        assert!(
            since.elapsed() < std::time::Duration::from_secs(10),
            "never taken"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    since.elapsed()
}

/// The records of a dead or fenced owner: every acknowledged one, in
/// order, by it (one more may have landed unprinted).
fn check_taken_over(journal: &[(u64, String)], acknowledged: u64) {
    let n = journal.len() as u64;
    assert!(
        n == acknowledged || n == acknowledged + 1,
        "{n} records, {acknowledged} acknowledged"
    );
    assert!(
        journal
            .iter()
            .enumerate()
            .all(|(i, (seq, by))| *seq == i as u64 + 1 && by == "a")
    );
}

#[test]
fn a_paused_owner_is_fenced_when_it_wakes() {
    let url = Place::postgres().postgres.unwrap();
    let b = postgres::PgEngine::open(owning(&url, "b", 1_000, 200)).unwrap();
    let session = SessionId::new();
    let mut child = OwnerChild::start(&url, session);
    child.wait_for(200);
    child.signal("-STOP");
    let stopped = std::time::Instant::now();
    child.drain();
    // Its lease lapses; the claim fences it.
    claim_until_ours(&b, session);
    eprintln!(
        "paused owner: its session taken {} ms after SIGSTOP (lease 1,000 ms)",
        stopped.elapsed().as_millis()
    );
    let before = owner_journal(&b, session);
    check_taken_over(&before, child.last);
    let n = before.len() as u64;
    for seq in n + 1..=n + 20 {
        let mut batch = Batch::new();
        batch.append(&session, seq, 0, &child_record("b"));
        b.write(&[&batch.ops[..]], true).unwrap();
    }
    child.signal("-CONT");
    let mut refused = None;
    while let Ok(line) = child.lines.recv_timeout(std::time::Duration::from_secs(20)) {
        // A write in flight at the pause may be acknowledged late: it
        // landed before the takeover (the claim waited for it).
        if let Some(seq) = acked(&line) {
            assert!(
                seq <= n,
                "a write after the takeover was acknowledged: {line}"
            );
        }
        if line.starts_with("refused ") {
            refused = Some(line);
            break;
        }
    }
    let refused = refused.expect("the resumed owner neither wrote nor was refused");
    assert!(refused.contains("fenced"), "{refused}");
    let after = owner_journal(&b, session);
    assert_eq!(after.len() as u64, n + 20);
    assert!(after[..n as usize] == before[..]);
    assert!(
        after[n as usize..].iter().all(|(_, by)| by == "b"),
        "{:?}",
        &after[n as usize..]
    );
}

/// A real node process owning a session is killed (SIGKILL) mid-writes:
/// another node takes the session after two of its heartbeats — not a
/// lease — finds every acknowledged record, and goes on.
#[test]
fn a_killed_owners_session_is_taken_after_two_heartbeats() {
    let url = Place::postgres().postgres.unwrap();
    let b = postgres::PgEngine::open(owning(&url, "b", 1_000, 200)).unwrap();
    let session = SessionId::new();
    let mut child = OwnerChild::start(&url, session);
    child.wait_for(200);
    child.signal("-KILL");
    let killed = std::time::Instant::now();
    claim_until_ours(&b, session);
    eprintln!(
        "killed owner: its session taken {} ms after SIGKILL (heartbeat 200 ms)",
        killed.elapsed().as_millis()
    );
    child.drain();
    let journal = owner_journal(&b, session);
    check_taken_over(&journal, child.last);
    let n = journal.len() as u64;
    let mut batch = Batch::new();
    batch.append(&session, n + 1, 0, &child_record("b"));
    b.write(&[&batch.ops[..]], true).unwrap();
    assert_eq!(owner_journal(&b, session).len() as u64, n + 1);
}

/// Where one node owns everything (RocksDB; PostgreSQL under the writer
/// lease), every session is this node's: claims, releases and the orphan
/// listing ask nothing of the database.
#[tokio::test]
async fn where_one_node_owns_everything_every_claim_is_ours() {
    for place in [Place::rocksdb(), Place::postgres()] {
        let store = open(&place, Durability::Sync);
        let s = SessionId::new();
        assert_eq!(store.claim(s).await.unwrap(), owners::Claim::Ours);
        assert_eq!(store.claim_run([1; 16]).await.unwrap(), owners::Claim::Ours);
        store.release(s).await.unwrap();
        assert!(store.orphaned(10).await.unwrap().is_empty());
        let mut b = Batch::new();
        b.append(&s, 1, 0, &child_record("a"));
        store.write(b).await.unwrap();
        assert_eq!(store.last_seq(s).await.unwrap(), 1);
        store.close();
    }
}

/// Owners ride out a database restart longer than their leases: while the
/// database has been up for less than two heartbeats nobody takes another
/// node's session, each owner renews in that window, and both write on;
/// neither is fenced.
#[test]
fn session_owners_keep_their_sessions_across_a_database_restart() {
    use owners::Claim;
    let server = baton_pgtest::PgServer::start().unwrap();
    let url = server.database().unwrap();
    // Heartbeat 300 ms, lease 1.2 s; the database stays away 2.5 s.
    let a = postgres::PgEngine::open(owning(&url, "a", 1_200, 300)).unwrap();
    let b = postgres::PgEngine::open(owning(&url, "b", 1_200, 300)).unwrap();
    let (sa, sb) = (SessionId::new(), SessionId::new());
    assert_eq!(a.claim(sa.as_bytes()).unwrap(), Claim::Ours);
    assert_eq!(b.claim(sb.as_bytes()).unwrap(), Claim::Ours);
    a.write(&[&[owned(&sa), put(1)]], true).unwrap();
    server.stop().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    server.restart().unwrap();
    let back = std::time::Instant::now();
    // For several heartbeats: no claim takes the other's session (a claim
    // may fail while its own node has not renewed yet).
    while back.elapsed() < std::time::Duration::from_millis(2_500) {
        for (engine, theirs) in [(&a, sb), (&b, sa)] {
            if let Ok(Claim::Ours) = engine.claim(theirs.as_bytes()) {
                panic!("a session was taken from its live owner after a database restart");
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for (engine, mine, n) in [(&a, sa, 2u8), (&b, sb, 3u8)] {
        let mut wrote = false;
        for _ in 0..50 {
            if engine.write(&[&[owned(&mine), put(n)]], true).is_ok() {
                wrote = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(wrote, "an owner could not write after the restart");
        assert_eq!(engine.node_status().lost, None);
    }
    assert_eq!(a.get(CF_INDEXES, &[1]).unwrap(), Some(vec![1]));
    assert_eq!(b.get(CF_INDEXES, &[2]).unwrap(), Some(vec![2]));
}
