//! redis-celery-sidecar: tells whether the Redis servers behind an app are working, and if
//! not, why; in numbers (`/metrics`) and in plain words (`/healthz`, `check`).
//!
//! # Layout
//!
//! Folders by layer, from the bottom; a module imports only from its own layer and the
//! ones above it in this list (`lib.rs` and `main.rs` assemble them):
//!
//! - [`text`]: durations, times and byte strings as settings and messages write them.
//! - [`redis`]: Redis itself. [`redis::target`] is one server and database, its roles and
//!   its URL (shown only redacted), read as redis-py, kombu or Celery reads it
//!   ([`redis::target`]'s `url` and `ssl`), taken apart by [`redis::pyurl`] as Python's
//!   urllib does; [`redis::tls`] makes TLS (built-in and private roots, client
//!   certificates); [`redis::pool`] is a bb8 pool per target whose manager remembers why a
//!   connect failed; [`redis::probe`] times PING and reads INFO ([`redis::info`]);
//!   [`redis::failure`] says why something failed (a fixed `reason` and a sentence);
//!   [`redis::resp`] is a minimal RESP client (`check`'s and the event subscription's);
//!   [`redis::span`] traces each command.
//! - [`config`]: the settings. [`config::cli`] is the command line (every setting a flag
//!   with an environment twin, named once in [`config::vars`]); [`config::dotenv`] reads
//!   `.env` as python-dotenv does; `config` validates everything once into typed values
//!   (the targets, the Celery and OTLP settings; errors name the variable) and describes
//!   it for `config`.
//! - [`celery`]: Celery through the broker. [`celery::kombu`] names kombu's keys and
//!   channels; [`celery::queues`] reads queues and reservations (and finds kombu's layout);
//!   [`celery::subscriber`] hears the events ([`celery::event`]) into the worker table
//!   ([`celery::workers`]) and task book ([`celery::tasks`]); [`celery::metrics`] holds its
//!   metric families.
//! - [`verdict`]: the one judgement of a Redis target and of the Celery check, shared by
//!   the server and `check` (with what the server alone watches probe after probe: keys
//!   evicted from a broker, results kept forever).
//! - [`notify`]: notifications: the transition record ([`notify::event`]), which changes
//!   are sent and together ([`notify::debounce`]), the bodies for Slack, Discord or JSON
//!   ([`notify::message`]), the POST and each receiver's outbox ([`notify::deliver`]).
//! - [`check`]: the `check` command, one diagnosis per target: [`check::diagnose`] walks a
//!   target step by step (its `connect` and `celery` steps), [`check::pidbox`] asks the
//!   workers `inspect ping`.
//! - [`telemetry`]: the log subscriber, text or JSON; [`telemetry::otel`], OTLP trace
//!   export through a bounded queue; [`telemetry::push`], the OTLP metrics push, which
//!   reads the exposition `/metrics` serves back into OTLP ([`telemetry::convert`],
//!   [`telemetry::otlp`]).
//! - [`serve`]: the server. [`serve::runner`] probes a Redis target every interval under
//!   the timeout and [`serve::celery`] runs the Celery check; both write the
//!   [`serve::snapshot`] (the latest report per check; freshness and status decided when
//!   read), the [`serve::metrics`] registry (with [`serve::process`]'s `process_*`) and
//!   the [`serve::history`] of the last hour and of every change; [`serve::health`] types
//!   the `/healthz` document; [`serve::http`] answers `/livez`, `/readyz`, `/healthz`,
//!   `/metrics`, the status page ([`serve::page`]) and its JSON ([`serve::api`]) from them
//!   only, the last two rendered when out of date ([`serve::cache`]); [`serve::notifier`]
//!   sends the history's changes to the webhooks.
//!
//! Probes write, HTTP reads: no request ever waits on Redis.

pub mod celery;
pub mod check;
pub mod config;
pub mod notify;
pub mod redis;
pub mod serve;
pub mod telemetry;
pub mod text;
pub mod verdict;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::celery::Shared;
use crate::celery::kombu::Naming;
use crate::celery::queues::QueueProbe;
use crate::celery::subscriber::Subscriber;
use crate::config::Config;
use crate::redis::pool::TargetPool;
use crate::serve::celery::{CeleryCheck, Heard};
use crate::serve::history::History;
use crate::serve::http;
use crate::serve::metrics::Metrics;
use crate::serve::redis::RedisCheck;
use crate::serve::runner::{self, Outlets, Runner};
use crate::serve::snapshot::Snapshot;

/// Serves until `shutdown` resolves: one runner task per Redis target, the Celery check
/// and its event subscriber, the metrics renderer, and the HTTP server on `listener`. Used
/// by `main` and by the in-process test (tests/inprocess.rs).
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let parts = assemble(&config);
    let mut tasks = tokio::task::JoinSet::new();
    // The probers take turns within the interval (see runner::ticks).
    let probers = parts.runners.len() + usize::from(parts.celery.is_some());
    let offset = |k| runner::offset(config.probe_interval, k, probers);
    let runners = parts.runners.len();
    for (k, runner) in parts.runners.into_iter().enumerate() {
        tasks.spawn(runner.run(offset(k)));
    }
    if let Some((celery, subscriber)) = parts.celery {
        tasks.spawn(celery.run(offset(runners)));
        tasks.spawn(subscriber.run());
    }
    serve::notifier::start(
        &config.notify,
        config.probe_interval,
        &parts.history,
        &parts.metrics,
        &mut tasks,
    );
    let app = Arc::new(http::App {
        snapshot: parts.snapshot,
        metrics: parts.metrics,
        auth_token: config.auth_token.clone(),
        max_connections: config.max_connections,
        history: parts.history,
        pages: http::Pages::new(config.probe_interval),
    });
    if let Some(push) = &config.otel_metrics {
        // The gRPC channel lives on the runtime.
        match telemetry::push::Pusher::new(push) {
            Ok(pusher) => {
                let metrics = app.metrics.clone();
                tasks.spawn(pusher.run(move || metrics.exposition().plain));
            }
            Err(problem) => tracing::error!("metrics are not pushed over OTLP: {problem}"),
        }
    }
    let renderer = app.clone();
    tasks.spawn(async move { renderer.metrics.render_loop(&renderer.snapshot).await });
    http::serve(listener, app, shutdown).await;
    tasks.abort_all();
}

/// Everything `run` and `check` start: the snapshot and what writes into it.
pub struct Parts {
    pub snapshot: Snapshot,
    /// One per Redis target.
    pub runners: Vec<Runner<RedisCheck>>,
    /// The Celery check and its event subscriber, when the broker is probed.
    pub celery: Option<(Runner<CeleryCheck>, Subscriber)>,
    pub metrics: Arc<Metrics>,
    pub history: Arc<History>,
}

/// The snapshot, one runner per Redis target (and, when the broker is probed, the Celery
/// check) writing into it, and the registry they share. The broker's pool serves both its
/// Redis probe and the Celery queue probe.
pub fn assemble(config: &Config) -> Parts {
    let metrics = Arc::new(Metrics::new().expect("metric names and labels are valid and unique"));
    let history = Arc::new(History::new(
        config.probe_interval,
        if config.celery.broker.is_some() {
            config.history_queues
        } else {
            0
        },
        config
            .targets
            .iter()
            .map(|t| (t.check_names(), t.redacted().to_string())),
    ));
    let outlets = Outlets {
        metrics: metrics.clone(),
        history: history.clone(),
    };
    let mut snapshot = Snapshot::new(&config.ready_checks, config.probe_interval);
    let pools: Vec<_> = config
        .targets
        .iter()
        .map(|t| TargetPool::new(t, config.probe_timeout, config.auth_recheck))
        .collect();
    let runners = config
        .targets
        .iter()
        .zip(&pools)
        .map(|(t, pool)| {
            let check = RedisCheck::new(t.clone(), pool.clone(), config.latency_slo, &metrics);
            Runner::new(
                check,
                t.check_names(),
                t.redacted().to_string(),
                &mut snapshot,
                &outlets,
                config.probe_interval,
                config.probe_timeout,
            )
        })
        .collect();
    let celery = config.celery.broker.as_ref().and_then(|broker| {
        // The broker's pool serves both its Redis probe and the Celery queue probe.
        let pool = config
            .targets
            .iter()
            .zip(&pools)
            .find(|(t, _)| *t == broker)
            .map(|(_, p)| p.clone())?;
        let c = &config.celery;
        let naming = Naming::new(c, broker.db());
        let shared = Arc::new(Mutex::new(Shared::new(c, naming.clone())));
        let changed = Arc::new(Notify::new());
        let probe = QueueProbe::new(pool, naming.clone(), c, config.probe_timeout);
        let heard = Heard {
            shared: shared.clone(),
            changed: changed.clone(),
        };
        let check = CeleryCheck::new(
            probe,
            heard,
            &snapshot,
            broker,
            c.clone(),
            config.latency_slo,
            history.clone(),
        );
        let (checks, endpoint) = check.check();
        let runner = Runner::new(
            check,
            checks,
            endpoint,
            &mut snapshot,
            &outlets,
            config.probe_interval,
            config.probe_timeout,
        );
        let subscriber = Subscriber::new(
            broker.clone(),
            crate::check::diagnose::link_boxed,
            c.keyprefix.is_some(),
            shared,
            changed,
            metrics.celery.clone(),
            config.probe_timeout,
        );
        Some((runner, subscriber))
    });
    Parts {
        snapshot,
        runners,
        celery,
        metrics,
        history,
    }
}

/// Binds `addr`; an IPv6 unspecified address (`[::]`) also accepts IPv4, whatever the
/// system's `bindv6only` default, since Railway's private network may be IPv6-only while
/// local tools use 127.0.0.1.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}
