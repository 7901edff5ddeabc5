//! The server in-process, through the crate's entry point `run` (what `main` calls), against
//! a real Redis: ready, healthy with its fields, its metrics, and a clean return when the
//! shutdown future resolves. Faster than a process per test, and it runs the same code.

mod support;

use std::time::Duration;

use redis_celery_sidecar::config::Config;
use redis_celery_sidecar::config::cli::Settings;
use support::{Redis, http, sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_a_healthy_redis_and_returns_on_shutdown() {
    let redis = Redis::start(&["--requirepass", "in-process-pw"]);
    let settings = Settings {
        redis_url: Some(format!("redis://:in-process-pw@127.0.0.1:{}/2", redis.port)),
        probe_interval: Some("200ms".into()),
        celery_min_workers: Some("0".into()),
        ..Settings::default()
    };
    let config = Config::from_settings(&settings).expect("a valid configuration");
    let listener = redis_celery_sidecar::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(redis_celery_sidecar::run(config, listener, async {
        let _ = stopped.await;
    }));

    let get = |path: &'static str| {
        tokio::task::spawn_blocking(move || http(addr, "GET", path, "").expect("an answer"))
    };
    let mut ready = None;
    for _ in 0..100 {
        let r = get("/readyz").await.unwrap();
        if r.status == 200 {
            ready = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready.map(|r| r.body), Some("ok\n".to_string()));
    let health = get("/healthz").await.unwrap().json();
    let cache = &health["checks"]["redis:cache"];
    assert_eq!(cache["status"], "healthy", "{health:#}");
    assert_eq!(
        cache["endpoint"],
        format!("redis://:***@127.0.0.1:{}/2", redis.port)
    );
    assert!(!health.to_string().contains("in-process-pw"));
    let metrics = get("/metrics").await.unwrap().body;
    assert_eq!(
        sample(&metrics, "redis_up{role=\"cache\"}"),
        Some(1.0),
        "{metrics}"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("run returns once the shutdown future resolves")
        .unwrap();
}
