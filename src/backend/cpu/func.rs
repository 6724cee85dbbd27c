//! The elementwise functions of `Func` and their derivatives, written once and instantiated for
//! f64 (`double`: the reference interpreter, the oracle) and f32 (`single`: the fast executor's
//! kernels and the JIT, which calls these same functions), so the two differ only by rounding
//! (and, for `tanh`, by the f32 path's rational approximation, [`single::tanh`]).

macro_rules! elementwise {
    ($t:ident, $erf:path, $tanh:path) => {
        use crate::ir::Func;

        pub fn apply(f: Func, x: $t) -> $t {
            match f {
                Func::Relu => x.max(0.0),
                Func::Gelu => 0.5 * x * (1.0 + $erf(x / std::$t::consts::SQRT_2)),
                Func::Tanh => $tanh(x),
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
                Func::Abs => x.abs(),
                Func::StopGrad => x,
                Func::Step => {
                    if x >= 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                }
                Func::Sin => x.sin(),
                Func::Cos => x.cos(),
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
                Func::Tanh => {
                    let t = $tanh(x);
                    1.0 - t * t
                }
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
                Func::Abs => {
                    if x > 0.0 {
                        1.0
                    } else if x < 0.0 {
                        -1.0
                    } else {
                        0.0
                    }
                }
                // No gradient flows through `stop_grad` (autodiff adds no backward box; this
                // is its derivative should one be asked for).
                Func::StopGrad | Func::Step => 0.0,
                Func::Sin => x.cos(),
                Func::Cos => -x.sin(),
            }
        }

        /// The larger of `a` and `b`: `a` on ties, NaN if either is NaN (`max(x, -inf)` is
        /// `x`). The JIT and the generated CUDA compute exactly this selection.
        pub fn max2(a: $t, b: $t) -> $t {
            if a >= b || a.is_nan() { a } else { b }
        }

        /// The smaller of `a` and `b` (as [`max2`]).
        pub fn min2(a: $t, b: $t) -> $t {
            if a <= b || a.is_nan() { a } else { b }
        }
    };
}

/// f32, for the fast executor and the JIT.
pub mod single {
    elementwise!(f32, libm::erff, tanh);

    /// The clamp and the coefficients of [`tanh`] (Eigen's `generic_fast_tanh_float`):
    /// `tanh(x) = x p(x^2) / q(x^2)` on `[-CLAMP, CLAMP]`, beyond which it is within an ulp of
    /// 1.
    pub const TANH_CLAMP: f32 = 7.905_311;
    pub const TANH_P: [f32; 7] = [
        -2.760_768_5e-16,
        2.000_188e-13,
        -8.604_672e-11,
        5.122_297e-8,
        1.485_722_4e-5,
        6.372_619e-4,
        4.893_524_6e-3,
    ];
    pub const TANH_Q: [f32; 4] = [1.198_258_4e-6, 1.185_347_1e-4, 2.268_434_7e-3, 4.893_525e-3];

    /// `tanh` in f32 as a rational function: within a few ulp of `f32::tanh`, and made of
    /// operations a vector unit has (min, max, multiply, add, divide), so that the JIT computes
    /// it four lanes at a time, in exactly these operations and this order, with the same
    /// results. NaN stays NaN.
    #[inline]
    pub fn tanh(x: f32) -> f32 {
        let x = x.clamp(-TANH_CLAMP, TANH_CLAMP);
        let x2 = x * x;
        let mut p = TANH_P[0];
        for c in &TANH_P[1..] {
            p = p * x2 + c;
        }
        let mut q = TANH_Q[0];
        for c in &TANH_Q[1..] {
            q = q * x2 + c;
        }
        x * p / q
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn tanh_is_within_a_few_ulp_of_the_library_one() {
            let mut worst = 0.0f64;
            for i in -200_000..=200_000 {
                let x = i as f32 * 5e-5;
                for x in [x, x * 200.0] {
                    let (a, b) = (super::tanh(x) as f64, (x as f64).tanh());
                    worst = worst.max((a - b).abs() / b.abs().max(1e-30));
                }
            }
            assert!(
                worst < 5.0 * f32::EPSILON as f64,
                "worst relative error {worst}"
            );
            assert_eq!(super::tanh(0.0), 0.0);
            assert!((super::tanh(100.0) - 1.0).abs() <= f32::EPSILON);
            assert_eq!(super::tanh(-100.0), -super::tanh(100.0));
            assert!(super::tanh(f32::NAN).is_nan());
        }
    }
}

/// f64, for the reference interpreter.
pub mod double {
    elementwise!(f64, libm::erf, f64::tanh);
}
