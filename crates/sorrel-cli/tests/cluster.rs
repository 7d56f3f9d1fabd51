//! A cluster of processes on one PostgreSQL: an API node (`sorrel serve --workers 0`) and `sorrel worker`
//! processes sharing a data folder. Thirty jobs are queued; the worker running the slow one is killed with
//! SIGKILL mid-job, a fourth worker joins, and the API node itself is killed and restarted. Every job must
//! complete exactly once with a whole MP4, the killed worker's job must be claimed again once its lease runs
//! out, every completion must reach the webhook receiver with one stable id, and a `DELETE` sent to the API
//! node must stop a job running in a worker process within a step.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The workers' lease: a dead worker's job is claimed again this long after its last renewal.
const LEASE_SECS: f64 = 2.0;

fn tiny_model() -> String {
    format!(
        "tiny={}",
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/wan-tiny-unipc/pipeline")
            .display()
    )
}

/// A node process; what it logs goes to a file the test reads afterwards.
struct Node {
    child: Child,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Starts `sorrel ARGS`, logging to `logs/NAME.log`, and returns it with the first line it prints.
    fn start(args: &[&str], logs: &Path, name: &str) -> (Self, String) {
        let log = logs.join(format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_sorrel"))
            .args(args)
            .env_remove("SORREL_API_KEYS")
            .env_remove("SORREL_STORE")
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("sorrel starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let node = Self { child, log };
        assert!(
            !line.is_empty(),
            "{name} stopped: {}",
            std::fs::read_to_string(&node.log).unwrap_or_default()
        );
        (node, line.trim().to_string())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An API-only node; its base URL.
fn api_node(store: &str, data: &Path, hook: &str, logs: &Path, name: &str) -> (Node, String) {
    let data = data.to_str().unwrap();
    let (node, line) = Node::start(
        &[
            "serve",
            "--store",
            store,
            "--workers",
            "0",
            "--data-dir",
            data,
            "--port",
            "0",
            "--poll-after-ms",
            "50",
            "--default-size",
            "32x32",
            "--default-seconds",
            "1",
            "--default-steps",
            "4",
            "--max-queued-per-key",
            "1000",
            "--webhook-url",
            hook,
            "--webhook-secret",
            "cluster-test-secret",
        ],
        logs,
        name,
    );
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .to_string();
    (node, url)
}

fn worker(store: &str, data: &Path, logs: &Path, name: &str) -> Node {
    let lease = LEASE_SECS.to_string();
    let (node, line) = Node::start(
        &[
            "worker",
            "--store",
            store,
            "--data-dir",
            data.to_str().unwrap(),
            "--model",
            &tiny_model(),
            "--lease-secs",
            &lease,
        ],
        logs,
        name,
    );
    assert_eq!(line, "worker ready: tiny");
    node
}

fn get(url: &str, path: &str) -> Value {
    let res = reqwest::blocking::get(format!("{url}{path}")).unwrap();
    assert_eq!(res.status(), 200, "GET {path}");
    res.json().unwrap()
}

fn get_text(url: &str, path: &str) -> String {
    reqwest::blocking::get(format!("{url}{path}"))
        .unwrap()
        .text()
        .unwrap()
}

fn post(url: &str, body: Value) -> String {
    let res = reqwest::blocking::Client::new()
        .post(format!("{url}/v1/videos"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// Polls `what` every 20 ms until it gives a value, failing after `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls video `id` until it is completed (failing if it fails or takes longer than `limit`); its object.
fn completed(url: &str, id: &str, limit: Duration) -> Value {
    wait_for(limit, &format!("{id} completes"), || {
        let v = get(url, &format!("/v1/videos/{id}"));
        assert_ne!(v["status"], "failed", "{v}");
        (v["status"] == "completed").then_some(v)
    })
}

/// One delivery attempt the receiver saw.
#[derive(Clone)]
struct Attempt {
    id: String,
    body: String,
    accepted: bool,
    at: Instant,
}

/// A webhook receiver that refuses the first attempt of every event (so each is retried) and accepts the
/// rest.
fn receiver() -> (String, Arc<Mutex<Vec<Attempt>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut id, mut len) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "webhook-id" => id = v.trim().to_string(),
                        "content-length" => len = v.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let mut seen = log.lock().unwrap();
            let accepted = seen.iter().any(|a| a.id == id);
            seen.push(Attempt {
                id,
                body: String::from_utf8_lossy(&body).into_owned(),
                accepted,
                at: Instant::now(),
            });
            let status = if accepted {
                "200 OK"
            } else {
                "500 Internal Server Error"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, seen)
}

/// The process id in a job log's "attempt N on HOST-PID-RANDOM" line for attempt `n`.
fn pid_of_attempt(log: &str, n: u32) -> Option<u32> {
    let rest = log.split(&format!("attempt {n} on ")).nth(1)?;
    let node = rest.split_whitespace().next()?;
    let mut parts = node.rsplitn(3, '-');
    parts.next()?;
    parts.next()?.parse().ok()
}

#[test]
fn a_cluster_of_processes_finishes_every_job_exactly_once() {
    let Some(pg) = sorrel_testkit::postgres::postgres() else {
        return;
    };
    let store = pg.new_database();
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (hook, attempts) = receiver();
    let (api, url) = api_node(&store, data.path(), &hook, logs.path(), "api");
    let mut workers: Vec<Node> = (0..3)
        .map(|i| worker(&store, data.path(), logs.path(), &format!("worker{i}")))
        .collect();
    wait_for(Duration::from_secs(10), "the workers publish tiny", || {
        (get(&url, "/v1/models")["data"][0]["id"] == "tiny").then_some(())
    });

    // Thirty jobs: a slow one first (65 frames at 128x128, 40 steps), then 29 quick ones.
    let slow = post(
        &url,
        json!({"prompt": "slow", "size": "128x128", "seconds": 4, "steps": 40}),
    );
    let mut ids = vec![slow.clone()];
    for i in 0..29 {
        ids.push(post(
            &url,
            json!({"prompt": format!("quick {i}"), "seed": i, "size": "64x64", "steps": 8}),
        ));
    }

    // The worker running the slow job is named in its log; kill it with SIGKILL mid-job.
    let pid = wait_for(Duration::from_secs(60), "the slow job runs", || {
        let v = get(&url, &format!("/v1/videos/{slow}"));
        if v["status"] != "in_progress" || v["progress"].as_u64().unwrap() < 20 {
            return None;
        }
        pid_of_attempt(&get_text(&url, &format!("/v1/videos/{slow}/logs")), 1)
    });
    let victim = workers
        .iter()
        .position(|w| w.child.id() == pid)
        .unwrap_or_else(|| panic!("no worker has pid {pid}"));
    let mut killed = workers.remove(victim);
    killed.child.kill().unwrap(); // SIGKILL: no shutdown code runs, the lease is left to run out
    killed.child.wait().unwrap();
    let killed_at = Instant::now();

    // A fourth worker joins.
    workers.push(worker(&store, data.path(), logs.path(), "worker3"));

    // The API node dies too, just after a webhook attempt was refused (so that event's retry is the new
    // node's to make), and comes back on the same store.
    wait_for(Duration::from_secs(60), "a first webhook attempt", || {
        (!attempts.lock().unwrap().is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut api = api;
    api.child.kill().unwrap();
    api.child.wait().unwrap();
    let api_killed_at = Instant::now();
    let (_api, url) = api_node(&store, data.path(), &hook, logs.path(), "api2");

    // The killed worker's job is claimed again once its lease runs out, by another worker.
    let new_pid = wait_for(
        Duration::from_secs(60),
        "the killed job is claimed again",
        || pid_of_attempt(&get_text(&url, &format!("/v1/videos/{slow}/logs")), 2),
    );
    let reclaimed = killed_at.elapsed().as_secs_f64();
    eprintln!("lease {LEASE_SECS} s: the killed worker's job was claimed again {reclaimed:.2} s after the kill");
    assert_ne!(new_pid, pid);
    // It waited for the lease (renewed at every step and every third of a lease, so at most LEASE_SECS
    // old at the kill), and no longer than the lease, a claim poll (1 s) and a job ahead of it.
    assert!(
        (LEASE_SECS / 3.0..LEASE_SECS + 6.0).contains(&reclaimed),
        "claimed again after {reclaimed:.2} s"
    );

    // Every job completes, each MP4 whole.
    for id in &ids {
        let v = completed(&url, id, Duration::from_secs(300));
        let mp4 = data.path().join("videos").join(id).join("video.mp4");
        let p = sorrel_testkit::ffprobe(&mp4);
        let frames = if *id == slow { 65 } else { 17 };
        assert_eq!((p.codec.as_str(), p.frames), ("h264", frames), "{id}: {v}");
    }

    // Exactly once: across every worker's log, each job was completed by one claim.
    let mut logs_text: Vec<String> = workers.iter().map(Node::log_text).collect();
    logs_text.push(killed.log_text());
    let late = logs_text[logs_text.len() - 2].clone();
    for id in &ids {
        let n: usize = logs_text
            .iter()
            .map(|l| l.matches(&format!("{id} completed")).count())
            .sum();
        assert_eq!(n, 1, "{id} completed {n} times");
    }
    let late_jobs = late.matches(" completed").count();
    eprintln!("the late worker completed {late_jobs} job(s)");
    assert!(
        late_jobs > 0,
        "the worker started later took no job: {late}"
    );

    // Webhooks: every completion arrives, each under one event id that every attempt repeats with the
    // same body, across the API node's restart.
    let by_job = wait_for(Duration::from_secs(60), "a webhook for every job", || {
        let seen = attempts.lock().unwrap().clone();
        let mut by_job: HashMap<String, HashSet<String>> = HashMap::new();
        for a in seen.iter().filter(|a| a.accepted) {
            let v: Value = serde_json::from_str(&a.body).unwrap();
            assert_eq!(v["type"], "video.completed", "{v}");
            by_job
                .entry(v["data"]["id"].as_str().unwrap().to_string())
                .or_default()
                .insert(a.id.clone());
        }
        ids.iter()
            .all(|id| by_job.contains_key(id))
            .then_some(by_job)
    });
    let seen = attempts.lock().unwrap().clone();
    for id in &ids {
        assert_eq!(by_job[id].len(), 1, "{id}: several event ids");
    }
    for a in &seen {
        let same: Vec<&Attempt> = seen.iter().filter(|b| b.id == a.id).collect();
        assert!(
            same.iter().all(|b| b.body == a.body),
            "{}: bodies differ",
            a.id
        );
    }
    let crossed = seen.iter().any(|a| {
        !a.accepted
            && a.at < api_killed_at
            && seen
                .iter()
                .any(|b| b.id == a.id && b.accepted && b.at > api_killed_at)
    });
    assert!(
        crossed,
        "no event refused before the API node's restart was delivered after it"
    );

    // A DELETE on the API node stops a job running in a worker process within a step.
    let long = post(
        &url,
        json!({"prompt": "a long one", "size": "256x256", "seconds": 4, "steps": 60}),
    );
    // Progress is 5 % at the start of denoising and moves 85/60 % per step: the time per step from the
    // changes after the first step.
    let mut changes: Vec<(u64, Instant)> = Vec::new();
    wait_for(
        Duration::from_secs(60),
        "a few steps of the long job",
        || {
            let v = get(&url, &format!("/v1/videos/{long}"));
            let p = v["progress"].as_u64().unwrap();
            if v["status"] == "in_progress" && p > 5 && changes.last().is_none_or(|(q, _)| *q != p)
            {
                changes.push((p, Instant::now()));
            }
            (changes.len() >= 4).then_some(())
        },
    );
    let ((p0, t0), (p1, t1)) = (changes[0], *changes.last().unwrap());
    let step = (t1 - t0).as_secs_f64() / ((p1 - p0) as f64 * 60.0 / 85.0);
    let res = reqwest::blocking::Client::new()
        .delete(format!("{url}/v1/videos/{long}"))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let deleted_at = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "the worker stops the deleted job",
        || {
            workers
                .iter()
                .any(|w| w.log_text().contains(&format!("{long} cancelled")))
                .then_some(())
        },
    );
    let stopped = deleted_at.elapsed().as_secs_f64();
    eprintln!("DELETE on the API node stopped the job in its worker after {stopped:.2} s (a step takes {step:.2} s)");
    // The step under way when the DELETE came finishes; the next does not start.
    assert!(
        stopped < 1.25 * step + 0.3,
        "stopped {stopped:.2} s after the DELETE; a step takes {step:.2} s"
    );
}

/// What a node refuses before it touches a store: each message names the fix.
#[test]
fn nodes_refuse_settings_that_cannot_work() {
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_sorrel"))
            .args(args)
            .env_remove("SORREL_STORE")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let err = run(&["worker"]);
    assert!(err.contains("pass --store postgres://"), "{err}");
    let err = run(&["worker", "--store", "mysql://db/jobs"]);
    assert!(err.contains("unknown store `mysql://db/jobs`"), "{err}");
    let err = run(&["worker", "--store", "sqlite:/tmp/jobs.db"]);
    assert!(
        err.contains("a worker takes jobs from a store that API nodes share"),
        "{err}"
    );
    let err = run(&[
        "serve",
        "--store",
        "postgres://db/jobs",
        "--workers",
        "0",
        "--model",
        &tiny_model(),
    ]);
    assert!(
        err.contains("--workers 0 makes an API-only node, which loads no model"),
        "{err}"
    );
}

/// A worker started without `--model` serves the embedded model, as `sorrel serve` does, and an API node
/// runs its jobs.
#[test]
fn a_worker_without_a_model_serves_the_embedded_one() {
    let Some(pg) = sorrel_testkit::postgres::postgres() else {
        return;
    };
    let store = pg.new_database();
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (_api, url) = api_node(
        &store,
        data.path(),
        "http://127.0.0.1:9/unused",
        logs.path(),
        "api",
    );
    let (_worker, line) = Node::start(
        &[
            "worker",
            "--store",
            &store,
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        logs.path(),
        "worker",
    );
    assert_eq!(line, "worker ready: sorrel-toyworld");
    wait_for(
        Duration::from_secs(10),
        "the embedded model is published",
        || (get(&url, "/v1/models")["data"][0]["id"] == "sorrel-toyworld").then_some(()),
    );
    let id = post(
        &url,
        json!({"prompt": "a small red ball moves to the right", "seed": 5}),
    );
    let v = completed(&url, &id, Duration::from_secs(120));
    assert_eq!(v["model"], "sorrel-toyworld");
    let p = sorrel_testkit::ffprobe(&data.path().join("videos").join(&id).join("video.mp4"));
    assert_eq!(p.codec, "h264", "{v}");
}
