//! `diagc selftest --device cuda`.

use super::*;

pub(super) fn selftest(device: &str, quick: bool) -> i32 {
    use crate::selftest as st;
    if device != "cuda" {
        return fail(Error::Usage(
            "selftest checks a backend against the CPU executor; only `--device cuda` exists \
             (the CPU executor itself is checked by `cargo test`)"
                .into(),
        ));
    }
    let gpu = match st::open() {
        Ok(g) => g,
        Err(why) => {
            errln!("diagc: selftest --device cuda: {why}; nothing to check on this machine");
            return 3;
        }
    };
    let nvrtc = crate::backend::cuda::nvrtc::load().unwrap_or("?");
    let version =
        crate::backend::cuda::nvrtc::version().map_or("?".to_string(), |(a, b)| format!("{a}.{b}"));
    outln!(
        "diagc selftest: {} ({}, {:.0} GiB), NVRTC {version} from {nvrtc}",
        gpu.info.name,
        gpu.info.arch(),
        gpu.info.memory_bytes as f64 / (1u64 << 30) as f64
    );
    outln!(
        "tolerances: |gpu - cpu| <= {} + {} |cpu| (LM step: {} + {} |cpu|); `worst` is the largest error / tolerance",
        st::ATOL,
        st::RTOL,
        st::LM_ATOL,
        st::LM_RTOL
    );
    let mut say = |o: &st::Outcome| match &o.error {
        Some(e) => outln!("FAIL {}: {e}", o.what),
        None => outln!(
            "{} {} (worst {:.3})",
            if o.passed() { "ok  " } else { "FAIL" },
            o.what,
            o.worst
        ),
    };
    let all = st::run(&gpu, quick, &mut say);
    let failed = all.iter().filter(|o| !o.passed()).count();
    outln!(
        "{} checks, {} passed, {failed} failed",
        all.len(),
        all.len() - failed
    );
    i32::from(failed > 0)
}
