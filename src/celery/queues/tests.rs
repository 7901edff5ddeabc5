use super::*;

fn found(sets: &[(&[u8], &[&[u8]])]) -> kombu::Found {
    let read: Vec<(Vec<u8>, Vec<Vec<u8>>)> = sets
        .iter()
        .map(|(k, ms)| (k.to_vec(), ms.iter().map(|m| m.to_vec()).collect()))
        .collect();
    kombu::Found::read(&read, None)
}

#[test]
fn the_prefix_and_separator_are_found_where_the_bindings_are() {
    let f = found(&[
        (b"myapp:_kombu.binding.celery", &[b"celery::celery"]),
        (b"myapp:_kombu.binding.emails", &[b"emails::emails"]),
        (
            b"myapp:_kombu.binding.celery.pidbox",
            &[b"::w1@h.celery.pidbox"],
        ),
    ]);
    let l = choose(&f, None, None, &[], &Layout::default());
    assert_eq!(
        (l.prefix.as_slice(), l.prefix_from),
        (b"myapp:".as_slice(), "found")
    );
    assert_eq!(l.seps, [b":".to_vec()]);
    assert_eq!(l.sep_from, "found");
    assert!(l.contradictions.is_empty());
    assert_eq!(
        f.queues(b"myapp:"),
        ["celery", "emails"].map(String::from).into()
    );
    // Nothing found any more (flushed): what was found holds.
    let before = l;
    let l = choose(&found(&[]), None, None, &[], &before);
    assert_eq!(
        (l.prefix.as_slice(), l.prefix_from),
        (b"myapp:".as_slice(), "found")
    );
    assert_eq!(l.seps, [b":".to_vec()]);
    // Nothing ever found: kombu's defaults.
    let l = choose(&found(&[]), None, None, &[], &Layout::default());
    assert_eq!(
        (l.prefix.as_slice(), l.prefix_from),
        (b"".as_slice(), "default")
    );
    assert_eq!(l.seps, [DEFAULT_SEP.to_vec()]);
}

#[test]
fn the_workers_pidbox_bindings_give_their_separator_and_hostnames() {
    let f = found(&[(
        b"app:_kombu.binding.celery.pidbox",
        &[
            b"::w1@h.celery.pidbox",
            b"\x06\x16\x06\x16old@h.celery.pidbox",
        ],
    )]);
    let l = choose(&f, None, None, &[b"app:"], &Layout::default());
    assert_eq!(
        l.workers_seps,
        [
            (DEFAULT_SEP.to_vec(), vec!["old@h".to_string()]),
            (b":".to_vec(), vec!["w1@h".to_string()]),
        ]
    );
}

#[test]
fn old_and_new_separators_coexist_the_workers_own_first() {
    let f = found(&[
        (
            b"_kombu.binding.celery",
            &[b"celery\x06\x16\x06\x16celery", b"celery::celery"],
        ),
        (b"_kombu.binding.celery.pidbox", &[b"::w1@h.celery.pidbox"]),
    ]);
    let l = choose(&f, None, None, &[], &Layout::default());
    assert_eq!(
        l.seps[0],
        b":".to_vec(),
        "the live workers' separator first"
    );
    assert!(l.seps.contains(&DEFAULT_SEP.to_vec()));
}

#[test]
fn several_apps_the_one_heard_then_the_one_with_most_queues() {
    let f = found(&[
        (
            b"a:_kombu.binding.celery",
            &[b"celery\x06\x16\x06\x16celery"],
        ),
        (
            b"b:_kombu.binding.celery",
            &[b"celery\x06\x16\x06\x16celery"],
        ),
        (
            b"b:_kombu.binding.emails",
            &[b"emails\x06\x16\x06\x16emails"],
        ),
    ]);
    let l = choose(&f, None, None, &[], &Layout::default());
    assert_eq!(l.prefix, b"b:");
    assert_eq!(l.other_prefixes, [b"a:".to_vec()]);
    let l = choose(&f, None, None, &[b"a:"], &Layout::default());
    assert_eq!(l.prefix, b"a:", "workers heard there");
}

#[test]
fn settings_win_and_a_contradiction_is_said() {
    let f = found(&[(b"myapp:_kombu.binding.celery", &[b"celery::celery"])]);
    let l = choose(
        &f,
        Some(b"other:"),
        Some(b"\x06\x16"),
        &[],
        &Layout::default(),
    );
    assert_eq!(
        (l.prefix.as_slice(), l.prefix_from),
        (b"other:".as_slice(), "set")
    );
    assert_eq!(l.contradictions.len(), 1, "{:?}", l.contradictions);
    assert!(l.contradictions[0].0.starts_with(
        "SIDECAR_CELERY_KEYPREFIX is \"other:\", but kombu's bindings on this broker are under \"myapp:\""
    ));
    let l = choose(&f, None, Some(b"\x06\x16"), &[], &Layout::default());
    assert_eq!(l.seps, [DEFAULT_SEP.to_vec()]);
    assert!(
        l.contradictions[0]
            .0
            .starts_with("SIDECAR_CELERY_SEP is \"\\x06\\x16\", but the app's bindings use \":\""),
        "{:?}",
        l.contradictions
    );
}

#[test]
fn the_cap_keeps_configured_then_the_longest() {
    let mut known = BTreeMap::new();
    for i in 0..MAX_QUEUES + 2 {
        known.insert(
            format!("q{i:05}"),
            Known {
                length: Some(if i == MAX_QUEUES + 1 { 50 } else { 0 }),
                ..Known::default()
            },
        );
    }
    known.insert(
        "zz-configured".into(),
        Known {
            configured: true,
            ..Known::default()
        },
    );
    let w = watch(&known);
    assert_eq!(w.len(), MAX_QUEUES);
    assert!(w.contains(&"zz-configured".to_string()));
    assert!(
        w.contains(&format!("q{:05}", MAX_QUEUES + 1)),
        "the longest"
    );
    assert!(!w.contains(&format!("q{:05}", MAX_QUEUES)));
}
