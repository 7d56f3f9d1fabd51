//! `--model OWNER/NAME`: a tiny diffusers pipeline laid out as the Hugging Face cache stores it loads by id with
//! the network off, and `sorrel models pull` fills that cache from a local stand-in for the hub that speaks its
//! file-resolve protocol (`/api/models/...` for the file list; `/resolve/` answering with `x-repo-commit`,
//! `x-linked-etag` and a redirect to another host that serves byte ranges).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use sorrel_testkit::fixture;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const ID: &str = "sorrel-test/wan-tiny";

fn sorrel(args: &[&str], home: &Path, envs: &[(&str, String)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sorrel"));
    c.args(args)
        .env("SORREL_DATA_DIR", home.join("data"))
        .env("SORREL_CACHE_DIR", home.join("cache"))
        .env("HF_HUB_CACHE", home.join("hf"))
        // Nothing here may reach the real hub: an endpoint that refuses connections unless a test sets one.
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env_remove("SORREL_MODEL");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run sorrel")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file of a folder, relative path to bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Lays `src` out as huggingface_hub does: blobs named by hash, snapshot links to them, a ref to the commit.
fn write_cache(src: &Path, hf: &Path) {
    let repo = hf.join("models--sorrel-test--wan-tiny");
    for (rel, bytes) in files(src) {
        let blob = repo.join("blobs").join(sha(&bytes));
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, &bytes).unwrap();
        let link = repo.join("snapshots").join(COMMIT).join(&rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let depth = rel.matches('/').count() + 2;
        let target = PathBuf::from("../".repeat(depth))
            .join("blobs")
            .join(sha(&bytes));
        std::os::unix::fs::symlink(target, &link).unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), COMMIT).unwrap();
}

fn generate(model: &str, out: &Path, home: &Path, envs: &[(&str, String)]) -> Output {
    sorrel(
        &[
            "generate",
            "dance monkey",
            "--model",
            model,
            "--steps",
            "2",
            "--frames",
            "5",
            "--size",
            "32x32",
            "--seed",
            "3",
            "-q",
            "-o",
            out.to_str().unwrap(),
        ],
        home,
        envs,
    )
}

#[test]
fn a_cached_model_loads_by_id_with_the_network_off() {
    let home = tempfile::tempdir().unwrap();
    let src = fixture("wan-tiny-unipc").join("pipeline");
    write_cache(&src, &home.path().join("hf"));
    let offline = [("HF_HUB_OFFLINE", "1".to_string())];

    let by_id = home.path().join("by-id.npy");
    let o = generate(ID, &by_id, home.path(), &offline);
    assert!(o.status.success(), "{}", text(&o));
    let by_dir = home.path().join("by-dir.npy");
    let o = generate(src.to_str().unwrap(), &by_dir, home.path(), &offline);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(&by_id).unwrap(),
        std::fs::read(&by_dir).unwrap(),
        "the cached copy must give the folder's frames"
    );
    // By commit too.
    let o = generate(
        &format!("{ID}@{COMMIT}"),
        &home.path().join("by-commit.npy"),
        home.path(),
        &offline,
    );
    assert!(o.status.success(), "{}", text(&o));

    let o = sorrel(&["models", "list"], home.path(), &offline);
    let listing = text(&o);
    assert!(o.status.success(), "{listing}");
    assert!(listing.contains("sorrel-toyworld"), "{listing}");
    assert!(
        listing.contains(ID) && listing.contains("text-to-video"),
        "{listing}"
    );

    // An id that is not there, offline: the message says how to fetch it, and nothing is written.
    let out = home.path().join("none.mp4");
    let o = generate(
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        &out,
        home.path(),
        &offline,
    );
    let msg = text(&o);
    assert!(!o.status.success());
    assert!(
        msg.contains("HF_HUB_OFFLINE")
            && msg.contains("sorrel models pull Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
        "{msg}"
    );
    assert!(!msg.contains("panicked"), "{msg}");
    assert!(!out.exists());
    // Neither a folder nor an id.
    let o = generate("no/such/folder", &out, home.path(), &offline);
    assert!(text(&o).contains("no such folder"), "{}", text(&o));
}

/// The stand-in hub's state: the repository's files, the requests seen, and a file to cut short once.
struct Hub {
    files: HashMap<String, Vec<u8>>,
    log: Vec<String>,
    truncate_once: Option<String>,
}

fn respond(mut s: TcpStream, hub: Arc<Mutex<Hub>>, port: u16) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (a, b) = v.trim().split_once('-').unwrap();
            range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
        }
    }
    let mut hub = hub.lock().unwrap();
    hub.log.push(match range {
        Some((a, b)) => format!("{path} {a}-{b}"),
        None => path.clone(),
    });
    let prefix = format!("/{ID}/resolve/main/");
    let reply = if path == format!("/api/models/{ID}/revision/main") {
        let mut names: Vec<&String> = hub.files.keys().collect();
        names.sort();
        let siblings: Vec<String> = names
            .iter()
            .map(|n| format!("{{\"rfilename\":\"{n}\"}}"))
            .chain(std::iter::once("{\"rfilename\":\"README.md\"}".to_string()))
            .collect();
        let body = format!(
            "{{\"sha\":\"{COMMIT}\",\"siblings\":[{}]}}",
            siblings.join(",")
        );
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    } else if let Some(name) = path.strip_prefix(&prefix) {
        match hub.files.get(name) {
            // As the hub does for large files: commit and content hash on a redirect to another host.
            Some(b) => format!(
                "HTTP/1.1 302 Found\r\nLocation: http://localhost:{port}/cdn/{name}\r\nx-repo-commit: {COMMIT}\r\n\
                 x-linked-etag: \"{}\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                sha(b)
            )
            .into_bytes(),
            None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        }
    } else if let Some(name) = path.strip_prefix("/cdn/") {
        let bytes = hub.files[name].clone();
        let (a, b) = range.unwrap_or((0, bytes.len() - 1));
        let b = b.min(bytes.len() - 1);
        let body = &bytes[a..=b];
        let mut head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            bytes.len(),
            body.len()
        )
        .into_bytes();
        if b > a && hub.truncate_once.as_deref() == Some(name) {
            // The connection drops halfway through the body.
            hub.truncate_once = None;
            head.extend_from_slice(&body[..body.len() / 2]);
        } else {
            head.extend_from_slice(body);
        }
        head
    } else {
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
    };
    drop(hub);
    let _ = s.write_all(&reply);
    let _ = s.flush();
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = r.read(&mut [0u8; 1]);
}

fn serve(hub: Arc<Mutex<Hub>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let hub = hub.clone();
            std::thread::spawn(move || respond(s, hub, port));
        }
    });
    port
}

#[test]
fn pull_fills_the_cache_resumes_and_then_downloads_nothing() {
    let home = tempfile::tempdir().unwrap();
    let src = fixture("wan-tiny-unipc").join("pipeline");
    let repo_files: HashMap<String, Vec<u8>> = files(&src).into_iter().collect();
    let transformer = "transformer/diffusion_pytorch_model.safetensors".to_string();
    let hub = Arc::new(Mutex::new(Hub {
        files: repo_files.clone(),
        log: vec![],
        truncate_once: Some(transformer.clone()),
    }));
    let port = serve(hub.clone());
    let env = [("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))];
    let snapshot = home
        .path()
        .join("hf/models--sorrel-test--wan-tiny/snapshots")
        .join(COMMIT);

    // A download cut short: a clear error, and no half file where the model is read from.
    let o = sorrel(&["models", "pull", ID, "-q"], home.path(), &env);
    let msg = text(&o);
    assert!(
        !o.status.success(),
        "the truncated download should fail: {msg}"
    );
    assert!(
        msg.contains("cannot download") && msg.contains("run again to resume"),
        "{msg}"
    );
    assert!(!msg.contains("panicked"), "{msg}");
    assert!(!snapshot.join(&transformer).exists());
    let blob = home
        .path()
        .join("hf/models--sorrel-test--wan-tiny/blobs")
        .join(sha(&repo_files[&transformer]));
    assert!(!blob.exists(), "a half blob is in the cache");

    // Resuming: a part file with its first half committed is continued from there, not from 0.
    let bytes = &repo_files[&transformer];
    let half = bytes.len() / 2;
    let mut part = bytes[..half].to_vec();
    part.resize(bytes.len(), 0);
    part.extend_from_slice(&(half as u64).to_le_bytes());
    std::fs::write(blob.with_extension("sync.part"), part).unwrap();
    hub.lock().unwrap().log.clear();
    let o = sorrel(&["models", "pull", ID, "-q"], home.path(), &env);
    assert!(o.status.success(), "{}", text(&o));
    let log = hub.lock().unwrap().log.clone();
    let tr_ranges: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with(&format!("/cdn/{transformer} ")) && !l.ends_with(" 0-0"))
        .collect();
    assert_eq!(tr_ranges.len(), 1, "{log:?}");
    assert!(
        tr_ranges[0].ends_with(&format!(" {half}-{}", bytes.len())),
        "the transformer should resume at byte {half}: {log:?}"
    );
    assert!(!log.iter().any(|l| l.contains("README.md")), "{log:?}");
    for (rel, want) in &repo_files {
        assert_eq!(&std::fs::read(snapshot.join(rel)).unwrap(), want, "{rel}");
    }

    // A second pull downloads nothing.
    hub.lock().unwrap().log.clear();
    let o = sorrel(&["models", "pull", ID, "-q"], home.path(), &env);
    assert!(o.status.success(), "{}", text(&o));
    let log = hub.lock().unwrap().log.clone();
    assert!(
        log.iter()
            .all(|l| !l.contains("/resolve/") && !l.starts_with("/cdn/")),
        "{log:?}"
    );

    // And the model loads by id, offline, from what was pulled.
    let out = home.path().join("pulled.npy");
    let o = generate(
        ID,
        &out,
        home.path(),
        &[("HF_HUB_OFFLINE", "1".to_string())],
    );
    assert!(o.status.success(), "{}", text(&o));

    // An id the hub does not have.
    let o = sorrel(
        &["models", "pull", "sorrel-test/nothing", "-q"],
        home.path(),
        &env,
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("has no model sorrel-test/nothing"),
        "{}",
        text(&o)
    );
}
