//! Celery's steps of the broker's diagnosis: its keys, queues, workers heard and, with
//! `--ping`, workers asked.

use super::*;

/// Celery's steps on the broker: queues and reservations, workers heard, and with `ping`
/// the workers' answers to `inspect ping`; judged by the server's own rules.
pub(super) async fn celery_steps(d: &mut Diagnosis, c: &CeleryConfig, config: &Config, ping: bool) {
    use crate::celery::kombu::Naming;
    let target = d.target.clone();
    let configured = Naming::new(c, target.db());
    // Workers heard within two heartbeat intervals, under every key prefix (which apps are
    // alive decides which is watched, as in the server); with none required (and no ping),
    // the subscription alone is tried, so that a refusal is seen as the server sees it.
    let window = if c.min_workers == 0 && !ping {
        Duration::ZERO
    } else {
        Duration::from_millis(4500)
    };
    let heard = workers_heard(
        &target,
        &configured,
        c.keyprefix.is_some(),
        window,
        config.probe_timeout,
    )
    .await;
    let prefixes: Vec<(Vec<u8>, tokio::time::Instant)> = heard
        .as_ref()
        .map(|h| {
            h.iter()
                .filter(|(_, hosts)| !hosts.is_empty())
                .map(|(p, _)| (p.clone(), Instant::now()))
                .collect()
        })
        .unwrap_or_default();
    let queues = read_queues(&target, &configured, c, config, prefixes).await;
    // The names as found on the broker: the key prefix and separator the workers use.
    let naming = match &queues {
        Ok((obs, _)) => configured.with_layout(obs.layout.prefix.clone(), obs.layout.seps.clone()),
        Err(_) => configured.clone(),
    };
    // The workers heard under the prefix watched.
    let heard: Result<Vec<String>, Failure> =
        heard.map(|mut h| h.remove(naming.prefix()).unwrap_or_default());
    let channel = String::from_utf8_lossy(&naming.events_pattern()).into_owned();
    let alive = heard.as_ref().map_or(0, Vec::len);
    let seen = verdict::Seen {
        subscribed: heard.is_ok(),
        cause: heard.as_ref().err(),
        held: heard.is_ok(),
        in_grace: false,
        alive,
        down: &[],
        channel: &channel,
        // A one-shot check hears no task start: how long tasks run is the server's to say.
        running: &[],
        consuming: None,
    };
    let observed = queues
        .as_ref()
        .map(|(obs, _)| obs.clone())
        .map_err(Clone::clone);
    let judged = verdict::celery(
        c,
        target.redacted(),
        config.latency_slo,
        None,
        &observed,
        &seen,
    );
    let mut findings = judged.findings;
    let step = |name: &'static str, detail: String, findings: &[Finding]| -> Step {
        if let Some(cause) = judged.error.as_ref().filter(|e| e.step == name) {
            return Step::fail(name, cause.failure.clone(), cause.fix.clone());
        }
        let mine: Vec<&Finding> = findings.iter().filter(|f| f.step == name).collect();
        match mine.first() {
            None => Step::ok(name, detail),
            Some(first) => {
                let mut texts: Vec<&str> = mine.iter().map(|f| f.text.as_str()).collect();
                texts.push(&detail);
                Step::warn(name, texts.join("; "), first.fix.clone())
            }
        }
    };

    // kombu's keys: where they were found.
    if let Ok((obs, _)) = &queues {
        let l = &obs.layout;
        let steps: Vec<String> = l.steps_seen.iter().map(u32::to_string).collect();
        let mut detail = format!(
            "key prefix {} ({}), separator {} ({}), priority steps holding tasks: {}",
            quoted([l.prefix.as_slice()]),
            l.prefix_from,
            quoted(l.seps.iter().map(Vec::as_slice)),
            l.sep_from,
            if steps.is_empty() {
                "none".to_string()
            } else {
                steps.join(",")
            }
        );
        if !l.other_prefixes.is_empty() {
            detail.push_str(&format!(
                "; other apps' key prefixes on this db: {} (set SIDECAR_CELERY_KEYPREFIX to watch another)",
                quoted(l.other_prefixes.iter().map(Vec::as_slice))
            ));
        }
        d.steps.push(step("celery keys", detail, &findings));
    }

    // Queues: depths only (how long a queue's front has not moved needs watching over
    // time: the server's /healthz has it).
    let detail = match &queues {
        Err(_) => String::new(),
        Ok((obs, discovered)) => {
            if !discovered {
                findings.push(Finding::new(
                    "celery queues",
                    "the walk of the binding sets did not finish in time, so queues may be missing",
                    "name the app's queues in SIDECAR_CELERY_QUEUES, or run check again (a large keyspace takes several passes)",
                ));
            }
            let list: Vec<String> = obs
                .queues
                .iter()
                .map(|q| format!("{} {}", q.name, q.length))
                .collect();
            let mut detail = format!(
                "{}; unacked {}, orphaned {}",
                list.join(", "),
                obs.unacked,
                obs.orphaned
            );
            if let Some(age) = obs.oldest_reservation {
                detail.push_str(&format!(", oldest reservation {}", crate::text::human(age)));
            }
            detail
        }
    };
    d.steps.push(step("celery queues", detail, &findings));

    // Beat, when RedBeat's schedule is on the broker (tasks declared to be heard as task
    // events need watching over time: the server's to judge).
    if let Ok((obs, _)) = &queues
        && let Some(b) = &obs.beat
    {
        let now = crate::text::unix_now();
        let lock_key = crate::celery::beat::RedBeat::new(&c.redbeat_prefix).lock_key();
        if let Some(f) = verdict::beat(b, now, &lock_key) {
            findings.push(f);
        }
        let lock = match b.lock {
            Some(t) => format!("{lock_key} held ({} left)", crate::text::human(t)),
            None => format!("{lock_key} not held"),
        };
        let next = b
            .entries
            .iter()
            .find_map(|p| Some((p, p.due? - now)))
            .map(|(p, d)| {
                let d = crate::text::human(Duration::from_secs_f64(d.abs()));
                if p.due.is_some_and(|due| due >= now) {
                    format!("; next due: {} in {d}", p.name)
                } else {
                    format!("; {} due {d} ago", p.name)
                }
            })
            .unwrap_or_default();
        let detail = format!(
            "RedBeat: {} periodic task(s), {lock}{next}",
            b.entries.len() + b.left_out
        );
        d.steps.push(step("celery beat", detail, &findings));
    }

    // Workers.
    let detail = match &heard {
        Err(f) => f.message.clone(),
        Ok(_) if window.is_zero() => format!(
            "subscribed to {channel}; no worker required (SIDECAR_CELERY_MIN_WORKERS=0), none waited for"
        ),
        Ok(heard) if heard.is_empty() => {
            format!("none heard on {channel} in {}", show(window))
        }
        Ok(heard) => format!(
            "heard {} in {}: {}",
            heard.len(),
            show(window),
            heard.join(", ")
        ),
    };
    let mut workers = step("celery workers", detail, &findings);
    // The queues could not be read, so the judgement stopped there: a subscription that
    // failed too is still said.
    if let (Err(f), Verdict::Ok) = (&heard, workers.verdict) {
        workers = Step::fail(
            "celery workers",
            f.clone(),
            "the event channels cannot be subscribed: check the ACL (&* channels, +psubscribe) and the broker's connection",
        );
    }
    d.steps.push(workers);

    // The ping runs even when no worker was heard: a worker with events disabled
    // (no heartbeats reach this channel) still answers it.
    // The ping is written in the workers' own separator (from their pidbox bindings),
    // whatever SIDECAR_CELERY_SEP says: a worker reads the reply binding with its own, and
    // one that cannot logs a control command error. Workers with two separators cannot
    // both be spoken to.
    // Members of SIGKILLed workers stay in the pidbox bindings: the separators of the
    // workers heard are the ones that count, when some were heard.
    let mut workers_seps: Vec<(Vec<u8>, Vec<String>)> = queues
        .as_ref()
        .map(|(obs, _)| obs.layout.workers_seps.clone())
        .unwrap_or_default();
    if let Ok(hosts) = &heard
        && workers_seps
            .iter()
            .any(|(_, members)| members.iter().any(|m| hosts.contains(m)))
    {
        workers_seps.retain(|(_, members)| members.iter().any(|m| hosts.contains(m)));
    }
    // The most used first.
    workers_seps.sort_by_key(|(sep, members)| (std::cmp::Reverse(members.len()), sep.clone()));
    if ping && workers_seps.len() > 1 {
        let seps = quoted(workers_seps.iter().map(|(s, _)| s.as_slice()));
        let finding = Finding::new(
            "celery ping",
            format!(
                "not sent: the workers' pidbox bindings use several separators ({seps}), and a worker that cannot read the request's logs an error"
            ),
            "stop the workers of the old configuration (or remove their stale members from _kombu.binding.celery.pidbox)",
        );
        d.steps.push(Step::warn(
            "celery ping",
            finding.text.clone(),
            finding.fix.clone(),
        ));
        findings.push(finding);
    } else if ping {
        let naming = match workers_seps.first() {
            Some((sep, _)) => naming.with_layout(naming.prefix().to_vec(), vec![sep.clone()]),
            None => naming.clone(),
        };
        let heard_some = alive > 0;
        match crate::check::pidbox::ping(&target, &naming, Duration::from_secs(1), config.probe_timeout).await {
            Err(f) => d.steps.push(Step::fail("celery ping", f, "the broker refused the ping's commands")),
            Ok(replies) if replies.is_empty() => d.steps.push(Step::fail(
                "celery ping",
                Failure::new(Reason::Other, "no worker answered inspect ping within 1s"),
                if heard_some {
                    "workers that heartbeat but do not answer are stuck (a busy solo or threads pool answers only between tasks), or listen on another broker or db"
                } else {
                    "are the workers running, with this broker URL and db, and the same key prefix?"
                },
            )),
            Ok(replies) => {
                let list: Vec<String> = replies
                    .iter()
                    .map(|(w, t)| format!("{w} in {:.1}ms", t.as_secs_f64() * 1e3))
                    .collect();
                // Workers that answer are alive, whatever their heartbeats said.
                if replies.len() >= c.min_workers as usize
                    && let Some(workers) = d
                        .steps
                        .iter_mut()
                        .find(|s| s.name == "celery workers" && s.verdict == Verdict::Fail)
                {
                    let finding = Finding::new(
                        "celery workers",
                        format!("{}, but {} answered inspect ping", workers.detail, replies.len()),
                        "their heartbeats do not reach the event channel: a busy solo-pool worker pauses them, --without-heartbeat turns them off; the server's celery check counts workers by heartbeat",
                    );
                    workers.verdict = Verdict::Warn;
                    workers.reason = None;
                    workers.detail = finding.text.clone();
                    workers.fix = Some(finding.fix.clone());
                    findings.push(finding);
                }
                d.steps.push(Step::ok("celery ping", list.join(", ")));
            }
        }
    }
    d.findings.extend(findings);
}

/// The queue probe's passes until the walk of the binding sets is done (a large keyspace
/// takes several), then one that reads every queue found; all under one deadline. With the
/// observation, whether the walk finished.
async fn read_queues(
    target: &Target,
    naming: &crate::celery::kombu::Naming,
    c: &CeleryConfig,
    config: &Config,
    heard: Vec<(Vec<u8>, tokio::time::Instant)>,
) -> Result<(crate::celery::queues::QueueObservation, bool), Failure> {
    let pool =
        crate::redis::pool::TargetPool::new(target, config.probe_timeout, config.auth_recheck);
    // Discovery gets a generous share: the check runs once.
    let probe =
        crate::celery::queues::QueueProbe::new(pool, naming.clone(), c, config.probe_timeout * 4);
    probe.heard(heard);
    let limit = config.probe_timeout * 4;
    let passes = async {
        loop {
            let obs = probe.probe().await?;
            if obs.discovered {
                return probe.probe().await.map(|obs| (obs, true));
            }
        }
    };
    match tokio::time::timeout(limit, passes).await {
        Ok(result) => result,
        // Out of time: what one more pass sees, said to be incomplete.
        Err(_) => match tokio::time::timeout(config.probe_timeout, probe.probe()).await {
            Ok(result) => result.map(|obs| (obs, false)),
            Err(_) => Err(Failure::timeout(
                target,
                Phase::Command("LLEN"),
                config.probe_timeout,
            )),
        },
    }
}

/// The workers whose events arrive within `window`, by key prefix: every prefix's with the
/// wide subscription, else the prefix of `naming` (none is waited for with a zero window:
/// the subscription itself is then the test).
async fn workers_heard(
    target: &Target,
    naming: &crate::celery::kombu::Naming,
    prefix_set: bool,
    window: Duration,
    limit: Duration,
) -> Result<std::collections::BTreeMap<Vec<u8>, Vec<String>>, Failure> {
    use crate::celery::subscriber::{Push, subscribe_events};
    let (mut resp, narrow) =
        subscribe_events(target, super::link_boxed, naming, prefix_set, limit).await?;
    let mut heard: std::collections::BTreeMap<Vec<u8>, Vec<String>> = Default::default();
    if let Some(n) = &narrow {
        heard.insert(n.prefix().to_vec(), Vec::new());
    }
    let until = Instant::now() + window;
    while let Ok(Ok(reply)) = tokio::time::timeout_at(until, resp.read()).await {
        let Push::Message { channel, payload } = Push::from(reply) else {
            continue;
        };
        let Some((prefix, _)) = naming.split_event_channel(&channel) else {
            continue;
        };
        let Ok(events) = crate::celery::event::decode(&payload) else {
            continue;
        };
        for e in events.into_iter().flatten() {
            if let crate::celery::event::Event::Worker(w) = e
                && w.kind != crate::celery::event::WorkerKind::Offline
            {
                if heard.len() >= crate::celery::MAX_PREFIXES && !heard.contains_key(prefix) {
                    continue;
                }
                let hosts = heard.entry(prefix.to_vec()).or_default();
                if !hosts.contains(&w.hostname) {
                    hosts.push(w.hostname);
                }
            }
        }
    }
    for hosts in heard.values_mut() {
        hosts.sort();
    }
    Ok(heard)
}
