//! The sweep report in a real browser: headless Chromium renders the synthetic report's page and
//! takes a screenshot, which must not be blank, and must show Figure 2 where it should be.
//!
//! Without Chromium the test fails (CI installs it: `.ci/run`), unless `DIAGC_SKIP_BROWSER=1`
//! is set outside CI, in which case it says that it skipped. `DIAGC_CHROMIUM` names another
//! binary. The screenshot is kept under the target directory (its path is printed).

mod sweep_common;

use diagc::sweep::report;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DIAGC_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Runs `cmd` for at most `limit`, killing it after that.
fn run_with_limit(cmd: &mut Command, limit: Duration) -> std::process::ExitStatus {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Takes a screenshot of `html` at `w` x `h`.
fn screenshot(browser: &Path, html: &Path, out: &Path, (w, h): (u32, u32)) {
    let profile = out.with_extension("profile");
    let status = run_with_limit(
        Command::new(browser).args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--log-level=3",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--window-size={w},{h}"),
            &format!("--screenshot={}", out.display()),
            &format!("file://{}", html.display()),
        ]),
        Duration::from_secs(120),
    );
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success(), "chromium exited with {status}");
    // Chromium exits 0 without writing anything when it cannot: check the file.
    assert!(
        out.is_file(),
        "chromium wrote no screenshot at {}",
        out.display()
    );
}

#[test]
fn the_report_renders_in_chromium() {
    let Some(browser) = chromium() else {
        let why = "headless Chromium is needed to check the report as a browser shows it \
                   (apt-get install chromium fonts-dejavu-core; or DIAGC_CHROMIUM=PATH)";
        if std::env::var_os("CI").is_some() {
            panic!("{why}; CI must install it (.ci/run)");
        }
        if std::env::var("DIAGC_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("sweep_browser: SKIPPED (DIAGC_SKIP_BROWSER=1): {why}");
            return;
        }
        panic!("{why}; set DIAGC_SKIP_BROWSER=1 to skip this test outside CI");
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sweep_browser");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let input = sweep_common::input();
    let r = report::render(&input).unwrap();
    let html = dir.join("report.html");
    std::fs::write(&html, &r.html).unwrap();
    for (stem, svg) in &r.figures {
        std::fs::write(dir.join(format!("{stem}.svg")), svg).unwrap();
    }
    let png = dir.join("report.png");
    screenshot(&browser, &html, &png, (1280, 2000));
    eprintln!("sweep_browser: the screenshot is {}", png.display());
    let bytes = std::fs::read(&png).unwrap();
    let pixmap = resvg::tiny_skia::Pixmap::decode_png(&bytes).expect("a PNG");
    assert_eq!((pixmap.width(), pixmap.height()), (1280, 2000));
    let px = |x: u32, y: u32| {
        let p = pixmap.pixel(x, y).unwrap();
        [p.red(), p.green(), p.blue()]
    };
    let colours: BTreeSet<[u8; 3]> = (0..pixmap.height())
        .step_by(2)
        .flat_map(|y| (0..pixmap.width()).step_by(2).map(move |x| (x, y)))
        .map(|(x, y)| px(x, y))
        .collect();
    assert!(
        colours.len() > 100,
        "{} colours: a blank page?",
        colours.len()
    );
    // Figure 2 comes after the title and the flags: its plot, with the classes' colours, lies
    // in the band below them.
    let (mut ink, mut coloured) = (0usize, BTreeSet::new());
    for y in (350..1100).step_by(2) {
        for x in (120..1160).step_by(2) {
            let [r, g, b] = px(x, y);
            if (r, g, b) != (255, 255, 255) {
                ink += 1;
            }
            let (hi, lo) = (r.max(g).max(b), r.min(g).min(b));
            if hi - lo > 80 {
                coloured.insert([r / 32, g / 32, b / 32]);
            }
        }
    }
    assert!(
        ink > 5_000,
        "{ink} non-white pixels where Figure 2 should be"
    );
    assert!(
        coloured.len() >= 6,
        "{} saturated colours where Figure 2's series should be",
        coloured.len()
    );
}
