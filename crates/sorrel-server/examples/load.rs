//! Load test for `sorrel serve`: N clients each create a video, poll it (honouring `openai-poll-after-ms`) to
//! the end, and start the next, for a fixed time; then the test waits for the queue to drain and checks that
//! every video it created completed. Prints latency percentiles of `GET /v1/videos/{id}` and `POST
//! /v1/videos`, and every response status seen.
//!
//! ```sh
//! sorrel serve --model tiny=tests/fixtures/wan-tiny-unipc/pipeline --port 8123 --data-dir /tmp/load \
//!     --default-size 32x32 --default-seconds 1 --default-steps 4 --poll-after-ms 250 --max-queued-per-key 1000
//! cargo run --release -p sorrel-server --example load -- http://127.0.0.1:8123 200 60
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Stats {
    get_ms: Vec<f64>,
    post_ms: Vec<f64>,
    /// Each client's first request, which also opens its connection.
    first_ms: Vec<f64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    created: Vec<String>,
    finished: u64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn client(base: String, until: Instant, stats: Arc<Mutex<Stats>>, n: usize) {
    let http = reqwest::Client::new();
    let mut i = 0;
    while Instant::now() < until {
        i += 1;
        let t = Instant::now();
        let res = http
            .post(format!("{base}/v1/videos"))
            .json(&serde_json::json!({"prompt": format!("client {n} clip {i}"), "seed": i}))
            .send()
            .await;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let res = match res {
            Ok(r) => r,
            Err(_) => {
                stats.lock().unwrap().errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = res.status().as_u16();
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        {
            let mut s = stats.lock().unwrap();
            if i == 1 {
                s.first_ms.push(ms);
            } else {
                s.post_ms.push(ms);
            }
            *s.statuses.entry(status).or_default() += 1;
        }
        let Some(id) = body["id"].as_str().map(String::from) else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        stats.lock().unwrap().created.push(id.clone());
        loop {
            let t = Instant::now();
            let res = http.get(format!("{base}/v1/videos/{id}")).send().await;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let Ok(res) = res else {
                stats.lock().unwrap().errors += 1;
                break;
            };
            let status = res.status().as_u16();
            let wait = res
                .headers()
                .get("openai-poll-after-ms")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1000);
            let v: serde_json::Value = res.json().await.unwrap_or_default();
            {
                let mut s = stats.lock().unwrap();
                s.get_ms.push(ms);
                *s.statuses.entry(status).or_default() += 1;
            }
            if status != 200 || v["status"] == "completed" || v["status"] == "failed" {
                if v["status"] == "completed" {
                    stats.lock().unwrap().finished += 1;
                }
                break;
            }
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8123".into());
    let clients: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let seconds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(60);
    let stats = Arc::new(Mutex::new(Stats::default()));
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|n| tokio::spawn(client(base.clone(), until, stats.clone(), n)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let load_s = t0.elapsed().as_secs_f64();

    // Drain: every created video must reach `completed`.
    let created = stats.lock().unwrap().created.clone();
    let http = reqwest::Client::new();
    let (mut completed, mut failed, mut lost) = (0, 0, 0);
    let drain_start = Instant::now();
    for id in &created {
        loop {
            let res = http
                .get(format!("{base}/v1/videos/{id}"))
                .send()
                .await
                .unwrap();
            if res.status() == 404 {
                lost += 1;
                break;
            }
            let v: serde_json::Value = res.json().await.unwrap();
            match v["status"].as_str() {
                Some("completed") => completed += 1,
                Some("failed") => failed += 1,
                _ => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            break;
        }
    }
    let mut s = stats.lock().unwrap();
    let gets = s.get_ms.len();
    let posts = s.post_ms.len() + s.first_ms.len();
    println!(
        "clients {clients}, load {load_s:.1} s, drain {:.1} s",
        drain_start.elapsed().as_secs_f64()
    );
    println!(
        "GET  /v1/videos/{{id}}: {gets} requests ({:.0}/s), p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        gets as f64 / load_s,
        pct(&mut s.get_ms, 0.5),
        pct(&mut s.get_ms, 0.9),
        pct(&mut s.get_ms, 0.99),
        pct(&mut s.get_ms, 1.0)
    );
    println!(
        "POST /v1/videos:      {posts} requests; after each client's first: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&mut s.post_ms, 0.5),
        pct(&mut s.post_ms, 0.99),
        pct(&mut s.post_ms, 1.0)
    );
    println!(
        "first POST per client (opens the connection): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&mut s.first_ms, 0.5),
        pct(&mut s.first_ms, 0.99),
        pct(&mut s.first_ms, 1.0)
    );
    println!("statuses {:?}, transport errors {}", s.statuses, s.errors);
    println!(
        "videos created {}, completed during load {}, after drain: completed {completed}, failed {failed}, lost {lost}",
        created.len(),
        s.finished
    );
    let five_xx: u64 = s
        .statuses
        .iter()
        .filter(|(k, _)| **k >= 500)
        .map(|(_, v)| v)
        .sum();
    if five_xx > 0 || lost > 0 || failed > 0 || s.errors > 0 {
        eprintln!(
            "FAILED: {five_xx} 5xx, {lost} lost, {failed} failed, {} transport errors",
            s.errors
        );
        std::process::exit(1);
    }
}
