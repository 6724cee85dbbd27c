//! `diagc data fetch ptb`, `diagc data status`, the data lookup order and `diagc train
//! --download`, against a small HTTP server on the loopback address (nothing here touches any
//! other network). The server serves the real files (read from `../shared/data/ptb`), a
//! corrupted copy, a copy cut short on its first request (then resumed with `Range`), 404s,
//! and a server that accepts and never answers (time-outs, no hang).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FILES: [&str; 3] = ["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"];

fn real_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ptb")
}

fn real(name: &str) -> Vec<u8> {
    std::fs::read(real_dir().join(name))
        .unwrap_or_else(|e| panic!("the PTB files must be in {}: {e}", real_dir().display()))
}

/// One request as the server saw it: the path and the `Range` header.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
}

/// A loopback HTTP/1.1 server, one thread per connection, `Connection: close`. Routes (NAME is
/// a Mikolov file name; `/split/` takes `train.txt` ...):
/// `/good/NAME` the file, with `Range: bytes=N-` support; `/split/X.txt` the same;
/// `/corrupt/NAME` the file with one byte changed; `/cut/NAME` on its first request per name
/// the headers of the whole file and half the body, then the connection closes, later requests
/// as `/good/`; `/stall/...` reads the request and never answers; anything else 404.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let files: Arc<HashMap<String, Vec<u8>>> =
            Arc::new(FILES.iter().map(|f| (f.to_string(), real(f))).collect());
        let cut_done = Arc::new(Mutex::new(Vec::<String>::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (files, log, cut_done) = (files.clone(), log.clone(), cut_done.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &files, &log, &cut_done);
                });
            }
        });
        Server { port, seen }
    }

    fn url(&self, route: &str) -> String {
        format!("http://127.0.0.1:{}/{route}/", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    conn: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    log: &Mutex<Vec<Seen>>,
    cut_done: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let mut conn = conn;
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    let (route, name) = (parts[0], parts.get(1).copied().unwrap_or(""));
    let name = if route == "split" {
        format!("ptb.{name}")
    } else {
        name.to_string()
    };
    if route == "stall" {
        std::thread::sleep(Duration::from_secs(30));
        return Ok(());
    }
    let Some(body) = files
        .get(&name)
        .filter(|_| ["good", "split", "corrupt", "cut"].contains(&route))
    else {
        return conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        );
    };
    let mut body = body.clone();
    if route == "corrupt" {
        body[100] ^= 1;
    }
    if route == "cut" {
        let mut done = cut_done.lock().unwrap();
        if !done.contains(&name) {
            done.push(name.clone());
            drop(done);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes())?;
            conn.write_all(&body[..body.len() / 2])?;
            conn.flush()?;
            return conn.shutdown(std::net::Shutdown::Both);
        }
    }
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    match start {
        Some(s) if s >= body.len() => conn.write_all(
            format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        ),
        Some(s) => {
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len() - 1,
                body.len(),
                body.len() - s
            );
            conn.write_all(head.as_bytes())?;
            conn.write_all(&body[s..])
        }
        None => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes())?;
            conn.write_all(&body)
        }
    }
}

/// A scratch directory with a `work/` to run from (where `../shared/data/ptb` does not exist)
/// and a `cache/` for XDG_CACHE_HOME.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("diagc-data-fetch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("work")).unwrap();
    d
}

/// `diagc ARGS` run from `scratch/work`, with the cache under `scratch/cache`, no proxy, no
/// DIAGC_DATA and the given mirrors instead of the built-in ones.
fn diagc(scratch: &Path, mirrors: &[String], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diagc"));
    c.args(args)
        .current_dir(scratch.join("work"))
        .env("XDG_CACHE_HOME", scratch.join("cache"))
        .env("DIAGC_PTB_MIRRORS", mirrors.join(" "))
        .env_remove("DIAGC_DATA");
    for p in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        c.env_remove(p);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_real_files(dir: &Path) {
    for f in FILES {
        assert!(
            std::fs::read(dir.join(f)).unwrap() == real(f),
            "{f} differs"
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "partial files left: {left:?}");
}

#[test]
fn fetch_skips_a_404_and_a_corrupt_mirror_and_verifies_into_the_cache() {
    let s = Server::start();
    let d = scratch("cache");
    let mirrors = [s.url("missing"), s.url("corrupt"), s.url("good")];
    // Nothing there yet: status says so (exit 1) and names the command.
    let o = diagc(&d, &mirrors, &["data", "status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("ptb.train.txt: not found"), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("diagc data fetch ptb"));

    let o = diagc(&d, &mirrors, &["data", "fetch", "ptb"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let cache = d.join("cache/diagc/ptb");
    assert_real_files(&cache);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("LDC"), "no licence note: {err}");
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(err.contains("SHA-256"), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        cache.display().to_string()
    );
    // Each file: the 404, the corrupt copy, the good one, in that order.
    let paths: Vec<String> = s.seen().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        &paths[..3],
        [
            "/missing/ptb.train.txt",
            "/corrupt/ptb.train.txt",
            "/good/ptb.train.txt"
        ]
    );
    assert_eq!(paths.len(), 9, "{paths:?}");

    // Status: every split in the cache (step 4), checksums match.
    let o = diagc(&d, &mirrors, &["data", "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for f in FILES {
        assert!(
            out.contains(&format!(
                "{f}: {} (step 4, cache): checksum matches",
                cache.join(f).display()
            )),
            "{out}"
        );
    }
    // A second fetch asks nothing of the network.
    let o = diagc(&d, &mirrors, &["data", "fetch", "ptb"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(s.seen().len(), 9);

    // A damaged file in the cache: status says so; fetching again replaces it.
    std::fs::write(cache.join("ptb.valid.txt"), b"not the file\n").unwrap();
    let o = diagc(&d, &mirrors, &["data", "status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("CHECKSUM MISMATCH"));
    let o = diagc(&d, &[s.url("good")], &["data", "fetch", "ptb"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_real_files(&cache);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_cut_download_is_resumed_with_a_range_request() {
    let s = Server::start();
    let d = scratch("cut");
    let to = d.join("ptb");
    let o = diagc(
        &d,
        &[s.url("cut")],
        &["data", "fetch", "ptb", "--to", to.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_real_files(&to);
    let seen = s.seen();
    let half = real("ptb.train.txt").len() / 2;
    let train: Vec<&Seen> = seen
        .iter()
        .filter(|r| r.path.ends_with("ptb.train.txt"))
        .collect();
    assert_eq!(train.len(), 2, "{seen:?}");
    assert_eq!(train[0].range, None);
    assert_eq!(
        train[1].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("resumed at byte {half}")),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_partial_file_left_behind_is_resumed_or_restarted() {
    let s = Server::start();
    let d = scratch("partial");
    let to = d.join("ptb");
    std::fs::create_dir_all(&to).unwrap();
    // A good prefix of the training file (an interrupted run) and garbage for the test file.
    let train = real("ptb.train.txt");
    std::fs::write(to.join(".ptb.train.txt.part"), &train[..1000]).unwrap();
    std::fs::write(to.join(".ptb.test.txt.part"), vec![b'x'; 5000]).unwrap();
    let o = diagc(
        &d,
        &[s.url("good")],
        &["data", "fetch", "ptb", "--to", to.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_real_files(&to);
    let seen = s.seen();
    let ranges = |f: &str| -> Vec<Option<String>> {
        seen.iter()
            .filter(|r| r.path.ends_with(f))
            .map(|r| r.range.clone())
            .collect()
    };
    assert_eq!(ranges("ptb.train.txt"), [Some("bytes=1000-".to_string())]);
    assert_eq!(ranges("ptb.valid.txt"), [None]);
    // The garbage prefix makes a wrong file: started again from byte 0.
    assert_eq!(
        ranges("ptb.test.txt"),
        [Some("bytes=5000-".to_string()), None]
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_stalled_mirror_times_out_and_the_next_one_serves() {
    let s = Server::start();
    let d = scratch("stall");
    let to = d.join("ptb");
    let t = Instant::now();
    let o = diagc(
        &d,
        &[s.url("stall"), format!("split:{}", s.url("split"))],
        &[
            "data",
            "fetch",
            "ptb",
            "--to",
            to.to_str().unwrap(),
            "--read-timeout",
            "0.5",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_real_files(&to);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("timed out"),
        "{}",
        text(&o)
    );
    assert!(s.seen().iter().any(|r| r.path == "/split/train.txt"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn when_every_mirror_fails_the_error_names_each_and_leaves_no_data() {
    let s = Server::start();
    let d = scratch("offline");
    // A port nobody listens on (bound, then released).
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/ptb/", l.local_addr().unwrap().port())
    };
    let mirrors = [
        s.url("stall"),
        s.url("missing"),
        closed.clone(),
        s.url("corrupt"),
    ];
    let t = Instant::now();
    let o = diagc(
        &d,
        &mirrors,
        &[
            "data",
            "fetch",
            "ptb",
            "--read-timeout",
            "0.5",
            "--connect-timeout",
            "2",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.rsplit("diagc: cannot fetch").next().unwrap();
    for m in &mirrors {
        assert!(
            last.contains(&format!("{m}ptb.train.txt: ")),
            "{m} not named: {err}"
        );
    }
    assert!(last.contains("timed out"), "{err}");
    assert!(last.contains("HTTP 404"), "{err}");
    assert!(last.contains("SHA-256"), "{err}");
    // Nothing the lookup would take for data, and status still says where to get it.
    let cache = d.join("cache/diagc/ptb");
    for f in FILES {
        assert!(!cache.join(f).exists());
    }
    let o = diagc(&d, &[], &["data", "status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // A bad mirror is a usage error before anything is fetched.
    let o = diagc(&d, &[], &["data", "fetch", "ptb", "--mirror", "ftp://x/"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("http://"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn mirror_flags_come_first() {
    let s = Server::start();
    let d = scratch("flag");
    let to = d.join("ptb");
    let o = diagc(
        &d,
        &[s.url("missing")],
        &[
            "data",
            "fetch",
            "ptb",
            "--to",
            to.to_str().unwrap(),
            "--mirror",
            &s.url("good"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_real_files(&to);
    assert!(s.seen().iter().all(|r| r.path.starts_with("/good/")));
    let _ = std::fs::remove_dir_all(&d);
}

const TINY: &[&str] = &[
    "train",
    "m1",
    "--d-model",
    "16",
    "--heads",
    "2",
    "--d-ff",
    "32",
    "--bptt",
    "8",
    "--batch-size",
    "2",
    "--steps",
    "2",
    "--train-tokens",
    "200",
    "--eval-tokens",
    "1000",
];

#[test]
fn train_says_how_to_get_the_data_and_download_fetches_it() {
    let s = Server::start();
    let d = scratch("train");
    let run = d.join("run");
    let mut args: Vec<&str> = TINY.to_vec();
    args.extend(["--out", run.to_str().unwrap()]);
    // No data anywhere: the error names the command.
    let o = diagc(&d, &[s.url("good")], &args);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("`diagc data fetch ptb`"), "{err}");
    assert!(err.contains("--download"), "{err}");
    assert!(s.seen().is_empty());
    // --download fetches into the cache, then trains from it, and the run records it.
    args.push("--download");
    let o = diagc(&d, &[s.url("good")], &args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let cache = d.join("cache/diagc/ptb");
    assert_real_files(&cache);
    assert!(String::from_utf8_lossy(&o.stdout).contains("test perplexity"));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(
        PathBuf::from(record["data_dir"].as_str().unwrap()),
        std::fs::canonicalize(&cache).unwrap()
    );
    // Bad flags are refused before anything is downloaded.
    let empty = scratch("train-bad");
    let o = diagc(
        &empty,
        &[s.url("good")],
        &["train", "m1", "--heads", "3", "--download"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!empty.join("cache").exists());
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn the_lookup_order_is_flag_env_shared_cache() {
    let d = scratch("order");
    // From a directory whose ../shared/data/ptb is the real one, that is what status shows.
    let work = d.join("work");
    std::fs::create_dir_all(d.join("shared/data")).unwrap();
    let shared = d.join("shared/data/ptb");
    std::fs::create_dir_all(&shared).unwrap();
    for f in FILES {
        std::fs::write(shared.join(f), real(f)).unwrap();
    }
    let o = diagc(&d, &[], &["data", "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("(step 3, ../shared/data/ptb): checksum matches"),
        "{out}"
    );
    assert!(
        out.contains("training reads ../shared/data/ptb (step 3"),
        "{out}"
    );
    // DIAGC_DATA comes before it, --data before both (taken as given, even when empty).
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_diagc"))
        .args(["data", "status"])
        .current_dir(&work)
        .env("XDG_CACHE_HOME", d.join("cache"))
        .env("DIAGC_DATA", &elsewhere)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "training reads {} (step 2, DIAGC_DATA)",
            elsewhere.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("(step 3, ../shared/data/ptb): checksum matches"),
        "{out}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_diagc"))
        .args(["data", "status", "--data", shared.to_str().unwrap()])
        .current_dir(&work)
        .env("XDG_CACHE_HOME", d.join("cache"))
        .env("DIAGC_DATA", &elsewhere)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(step 1, --data)"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_test_server_answers_404_for_unknown_routes() {
    // The server helper itself: a request to an unknown route is a 404 (a sanity check that
    // the tests above see what they think they see).
    let s = Server::start();
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.write_all(b"GET /nope/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    c.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
}
