//! The CUDA backend: CUDA C kernels compiled at run time with NVRTC, launched through cudarc.
//!
//! Nothing CUDA is needed to build diagc: the driver, NVRTC and cuBLAS are loaded dynamically
//! when first used, and [`probe`] checks that the driver library is present and sees a device
//! before any other call, so a machine without a GPU gets a one-line reason (and the CPU path),
//! never a panic.
//!
//! - [`nvrtc`]: finding NVRTC, compiling to CUBIN for the device's architecture, the disk cache;
//! - [`kernels`]: the hand-written kernels of `kernels/` (embedded in the binary);
//! - [`codegen`]: CUDA C rendered from the backend-neutral plan ([`crate::lir::Plan`]: the same
//!   lowering, memory plan and elementwise groups the CPU runs), `diagc compile --emit cuda`.

use crate::error::Error;
pub mod codegen;
pub mod kernels;
pub mod nvrtc;
pub mod runtime;

/// The GPU diagc would run on.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    /// Compute capability, `(9, 0)` for an H100.
    pub capability: (i32, i32),
    pub memory_bytes: usize,
}

impl DeviceInfo {
    /// The NVRTC architecture name: `sm_90`.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.capability.0, self.capability.1)
    }
}

/// Checks, without panicking, that the CUDA driver library is present and sees a device, and
/// describes device 0. The error is one line, for the user.
pub fn probe() -> Result<DeviceInfo, Error> {
    use cudarc::driver::{result, sys};
    // SAFETY: only tries to load the library; the handle is dropped.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::Device(
            "no CUDA driver (libcuda.so) on this machine".into(),
        ));
    }
    result::init().map_err(|e| Error::Device(format!("the CUDA driver did not start: {e}")))?;
    let count =
        result::device::get_count().map_err(|e| Error::Device(format!("cuDeviceGetCount: {e}")))?;
    if count < 1 {
        return Err(Error::Device("the CUDA driver sees no device".into()));
    }
    let dev = result::device::get(0).map_err(|e| Error::Device(format!("cuDeviceGet: {e}")))?;
    let name = result::device::get_name(dev).unwrap_or_else(|_| "an unnamed CUDA device".into());
    let attr = |a| {
        // SAFETY: `dev` is a valid device of an initialised driver.
        unsafe { result::device::get_attribute(dev, a) }.map_err(|e| Error::Device(format!("{e}")))
    };
    let capability = (
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
    );
    // SAFETY: as above.
    let memory_bytes = unsafe { result::device::total_mem(dev) }.unwrap_or(0);
    Ok(DeviceInfo {
        name,
        capability,
        memory_bytes,
    })
}

/// The CUDA of an instantiated diagram, forward (kernels `fwd_*`) and gradient (`grad_*`: the
/// forward boxes then the backward ones, [`crate::autodiff::gradient`]), as one self-contained
/// source: what `diagc compile --emit cuda` prints. `title` names the diagram and its sizes.
pub fn emit_instance(
    inst: &crate::ir::instance::Instance,
    title: &str,
) -> Result<(String, Vec<codegen::Part>), Error> {
    use crate::lir::Plan;
    let forward = Plan::for_instance(inst)?;
    let grad = crate::autodiff::gradient(&inst.diagram)?;
    let backward = Plan::new(&grad.diagram, &inst.axes, &inst.sizes)?;
    Ok(codegen::generate_module(&[
        ("fwd_", &forward, &format!("{title}, forward")),
        (
            "grad_",
            &backward,
            &format!("{title}, gradient (inputs, then one seed per output)"),
        ),
    ]))
}
