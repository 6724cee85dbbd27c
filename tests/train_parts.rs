//! The optimiser and checkpoints of the training protocol.

use diagc::train::checkpoint::{self, Checkpoint, NamedTensor};
use diagc::train::optim::{Adam, clip_global_norm, noam};

#[test]
fn noam_warms_up_linearly_then_decays_as_the_inverse_square_root() {
    let (d, w) = (512, 4000);
    let lr = |s| noam(s, d, w, 1.0);
    assert!((lr(1) - 512f64.powf(-0.5) * 4000f64.powf(-1.5)).abs() < 1e-15);
    assert!(
        (lr(2000) / lr(1000) - 2.0).abs() < 1e-9,
        "linear during warmup"
    );
    assert!(
        (lr(4000) - 512f64.powf(-0.5) * 4000f64.powf(-0.5)).abs() < 1e-15,
        "peak at warmup"
    );
    assert!((lr(16000) / lr(4000) - 0.5).abs() < 1e-9, "1/sqrt(s) after");
    assert!((noam(100, d, w, 2.0) / lr(100) - 2.0).abs() < 1e-12);
}

#[test]
fn adam_matches_the_pytorch_update_rule() {
    // Two steps by hand, in f64, for one parameter with gradients 0.5 then -0.25.
    let (b1, b2, eps, lr) = (0.9f64, 0.98f64, 1e-9f64, 0.01f64);
    let (mut p, mut m, mut v) = (1.0f64, 0.0, 0.0);
    for (t, g) in [(1, 0.5f64), (2, -0.25)] {
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
        let mh = m / (1.0 - b1.powi(t));
        let vh = v / (1.0 - b2.powi(t));
        p -= lr * mh / (vh.sqrt() + eps);
    }
    let mut adam = Adam::new(&[1]);
    let mut params = vec![vec![1.0f32]];
    adam.update(&mut params, &[vec![0.5]], lr);
    adam.update(&mut params, &[vec![-0.25]], lr);
    assert!(
        (params[0][0] as f64 - p).abs() < 1e-6,
        "{} vs {p}",
        params[0][0]
    );
    assert_eq!(adam.step, 2);
}

#[test]
fn clipping_bounds_the_global_norm() {
    let mut g = vec![vec![3.0f32, 0.0], vec![4.0]];
    let n = clip_global_norm(&mut g, 1.0);
    assert!((n - 5.0).abs() < 1e-12);
    let after: f64 = g
        .iter()
        .flatten()
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((after - 1.0).abs() < 1e-5);
    let mut small = vec![vec![0.1f32]];
    clip_global_norm(&mut small, 1.0);
    assert_eq!(small[0][0], 0.1);
    let mut off = vec![vec![30.0f32]];
    clip_global_norm(&mut off, 0.0);
    assert_eq!(off[0][0], 30.0, "0 disables clipping");
}

#[test]
fn checkpoints_round_trip_and_detect_corruption() {
    let dir = std::env::temp_dir().join(format!("diagc-ck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = |name: &str, shape: Vec<usize>, k: f32| NamedTensor {
        name: name.into(),
        data: (0..shape.iter().product::<usize>())
            .map(|i| i as f32 * k)
            .collect(),
        shape,
    };
    let ck = Checkpoint {
        tensors: vec![
            ("adam_m".into(), t("w", vec![2, 3], 0.5)),
            ("param".into(), t("b", vec![3], -1.0)),
            ("param".into(), t("w", vec![2, 3], 1.5)),
        ],
        sidecar: serde_json::json!({"step": 17, "config": {"layers": 1}}),
    };
    checkpoint::save(&dir, "best", &ck).unwrap();
    let (back, note) = checkpoint::load(&dir, "best").unwrap();
    assert_eq!(back, ck);
    assert_eq!(note, None);
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // One flipped byte in the tensor file is detected.
    let tpath = checkpoint::path(&dir, "best");
    let mut bytes = std::fs::read(&tpath).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&tpath, bytes).unwrap();
    let e = checkpoint::load(&dir, "best").unwrap_err().to_string();
    assert!(e.contains("corrupt"), "{e}");
    // A second generation keeps the first as `best.prev`; when the newest is damaged, the
    // previous one is loaded, and the note says so.
    let mut second = ck.clone();
    second.sidecar["step"] = serde_json::json!(18);
    checkpoint::save(&dir, "best", &ck).unwrap();
    checkpoint::save(&dir, "best", &second).unwrap();
    assert_eq!(checkpoint::load(&dir, "best").unwrap(), (second, None));
    let mut bytes = std::fs::read(&tpath).unwrap();
    bytes[last] ^= 0x40;
    std::fs::write(&tpath, &bytes).unwrap();
    let (back, note) = checkpoint::load(&dir, "best").unwrap();
    assert_eq!(back, ck);
    let note = note.expect("a note on the fallback");
    assert!(
        note.contains("corrupt") && note.contains("best.prev"),
        "{note}"
    );
    // Both damaged: the newest one's error.
    let prev = checkpoint::previous(&tpath);
    let mut p = std::fs::read(&prev).unwrap();
    p[last] ^= 0x40;
    std::fs::remove_file(&prev).unwrap();
    std::fs::write(&prev, &p).unwrap();
    let e = checkpoint::load(&dir, "best").unwrap_err().to_string();
    assert!(
        e.contains("corrupt") && e.contains("best.safetensors"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
