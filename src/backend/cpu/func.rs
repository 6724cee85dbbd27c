//! The elementwise functions of `Func` and their derivatives, written once and instantiated for
//! f64 (`double`: the reference interpreter, the oracle) and f32 (`single`: the fast executor's
//! kernels and the JIT, which calls these same functions), so the two differ only by rounding.

macro_rules! elementwise {
    ($t:ident, $erf:path) => {
        use crate::ir::Func;

        pub fn apply(f: Func, x: $t) -> $t {
            match f {
                Func::Relu => x.max(0.0),
                Func::Gelu => 0.5 * x * (1.0 + $erf(x / std::$t::consts::SQRT_2)),
                Func::Tanh => x.tanh(),
                Func::Exp => x.exp(),
                Func::Log => x.ln(),
                Func::Sqrt => x.sqrt(),
                Func::Elu1 => {
                    if x > 0.0 {
                        x + 1.0
                    } else {
                        x.exp()
                    }
                }
                Func::Sigmoid => 1.0 / (1.0 + (-x).exp()),
                Func::Recip => 1.0 / x,
            }
        }

        pub fn derivative(f: Func, x: $t) -> $t {
            match f {
                Func::Relu => {
                    if x > 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                }
                Func::Gelu => {
                    let cdf = 0.5 * (1.0 + $erf(x / std::$t::consts::SQRT_2));
                    let pdf = (-0.5 * x * x).exp() / (2.0 * std::$t::consts::PI).sqrt();
                    cdf + x * pdf
                }
                Func::Tanh => 1.0 - x.tanh().powi(2),
                Func::Exp => x.exp(),
                Func::Log => 1.0 / x,
                Func::Sqrt => 0.5 / x.sqrt(),
                Func::Elu1 => {
                    if x > 0.0 {
                        1.0
                    } else {
                        x.exp()
                    }
                }
                Func::Sigmoid => {
                    let s = 1.0 / (1.0 + (-x).exp());
                    s * (1.0 - s)
                }
                Func::Recip => -1.0 / (x * x),
            }
        }
    };
}

/// f32, for the fast executor and the JIT.
pub mod single {
    elementwise!(f32, libm::erff);
}

/// f64, for the reference interpreter.
pub mod double {
    elementwise!(f64, libm::erf);
}
