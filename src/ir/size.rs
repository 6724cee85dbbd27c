//! Symbolic axis sizes.
//!
//! A size is a monomial: a positive rational coefficient times a product of size variables with
//! integer exponents (`dm * head^-1`). Variables are the axes declared without a size; their
//! values are bound when a model is built. Products and quotients, the only operations reshapes
//! need, stay in this normal form, so two sizes are equal exactly when their normal forms are:
//! `head * (dm / head)` is `dm`. Whether a quotient is a whole number can only be decided once the
//! variables have values ([`Size::eval`]).

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Size {
    /// Numerator and denominator of the coefficient, in lowest terms, both positive.
    pub num: u64,
    pub den: u64,
    /// Variable name to exponent; no zero exponents are stored.
    pub vars: BTreeMap<String, i32>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

impl Size {
    pub fn constant(n: u64) -> Size {
        Size {
            num: n,
            den: 1,
            vars: BTreeMap::new(),
        }
    }

    pub fn var(name: &str) -> Size {
        let mut vars = BTreeMap::new();
        vars.insert(name.to_string(), 1);
        Size {
            num: 1,
            den: 1,
            vars,
        }
    }

    fn normalised(num: u64, den: u64, vars: BTreeMap<String, i32>) -> Size {
        let g = gcd(num, den);
        Size {
            num: num / g,
            den: den / g,
            vars: vars.into_iter().filter(|(_, e)| *e != 0).collect(),
        }
    }

    /// The product. Coefficients saturate instead of overflowing (a size that large is
    /// reported as invalid when evaluated).
    pub fn mul(&self, other: &Size) -> Size {
        let mut vars = self.vars.clone();
        for (v, e) in &other.vars {
            *vars.entry(v.clone()).or_insert(0) =
                vars.get(v).copied().unwrap_or(0).saturating_add(*e);
        }
        let (n1, d2) = reduce(self.num, other.den);
        let (n2, d1) = reduce(other.num, self.den);
        Size::normalised(n1.saturating_mul(n2), d1.saturating_mul(d2), vars)
    }

    pub fn inverse(&self) -> Size {
        Size {
            num: self.den,
            den: self.num.max(1),
            vars: self.vars.iter().map(|(v, e)| (v.clone(), -e)).collect(),
        }
    }

    pub fn div(&self, other: &Size) -> Size {
        self.mul(&other.inverse())
    }

    /// A whole number when no variables remain.
    pub fn as_constant(&self) -> Option<u64> {
        (self.vars.is_empty() && self.den == 1).then_some(self.num)
    }

    /// Whether an operation saturated (the size does not fit in 64 bits).
    pub fn overflowed(&self) -> bool {
        self.num == u64::MAX
            || self.den == u64::MAX
            || self
                .vars
                .values()
                .any(|e| e.unsigned_abs() >= i32::MAX as u32)
    }

    pub fn is_concrete(&self) -> bool {
        self.vars.is_empty()
    }

    /// The value under a binding of the variables; `None` when a variable is unbound or the
    /// result is not a positive whole number.
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<u64>) -> Option<u64> {
        let (mut num, mut den) = (self.num as u128, self.den as u128);
        for (v, e) in &self.vars {
            let x = lookup(v)? as u128;
            for _ in 0..e.unsigned_abs() {
                if *e > 0 {
                    num = num.checked_mul(x)?;
                } else {
                    den = den.checked_mul(x)?;
                }
            }
        }
        if den == 0 || num % den != 0 || num == 0 {
            return None;
        }
        u64::try_from(num / den).ok()
    }

    /// Why [`Size::eval`] gives no value although every variable is bound: the sentence names
    /// the variables and their values (`dm/head with dm=7, head=2 is 7/2, which is not a whole
    /// number`). `None` when a variable is unbound or the size evaluates.
    pub fn why_not(&self, lookup: &dyn Fn(&str) -> Option<u64>) -> Option<String> {
        if self.eval(lookup).is_some() {
            return None;
        }
        let mut vals = Vec::new();
        for v in self.vars.keys() {
            vals.push(format!("{v}={}", lookup(v)?));
        }
        let with = if vals.is_empty() {
            String::new()
        } else {
            format!(" with {}", vals.join(", "))
        };
        let (mut num, mut den) = (Some(self.num as u128), Some(self.den as u128));
        for (v, e) in &self.vars {
            let x = lookup(v)? as u128;
            for _ in 0..e.unsigned_abs() {
                if *e > 0 {
                    num = num.and_then(|n| n.checked_mul(x));
                } else {
                    den = den.and_then(|d| d.checked_mul(x));
                }
            }
        }
        Some(match (num, den) {
            (Some(0), _) | (_, Some(0)) => format!("{self}{with} is 0; sizes must be positive"),
            (Some(n), Some(d)) if n % d != 0 => {
                format!("{self}{with} is {n}/{d}, which is not a whole number: it does not divide")
            }
            _ => format!("{self}{with} does not fit in 64 bits"),
        })
    }
}

fn reduce(a: u64, b: u64) -> (u64, u64) {
    let g = gcd(a, b);
    (a / g, b / g)
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.num != 1 || self.vars.values().all(|e| *e < 0) {
            parts.push(self.num.to_string());
        }
        for (v, e) in &self.vars {
            if *e > 0 {
                parts.push(if *e == 1 {
                    v.clone()
                } else {
                    format!("{v}^{e}")
                });
            }
        }
        let mut s = parts.join("*");
        let mut below: Vec<String> = Vec::new();
        if self.den != 1 {
            below.push(self.den.to_string());
        }
        for (v, e) in &self.vars {
            if *e < 0 {
                below.push(if *e == -1 {
                    v.clone()
                } else {
                    format!("{v}^{}", -e)
                });
            }
        }
        for b in below {
            s.push('/');
            s.push_str(&b);
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotient_times_divisor_is_the_dividend() {
        let dm = Size::var("dm");
        let head = Size::var("head");
        let dk = dm.div(&head);
        assert_eq!(head.mul(&dk), dm);
        assert_eq!(dk.to_string(), "dm/head");
        assert_ne!(dk, dm);
    }

    #[test]
    fn constants_reduce_and_evaluate() {
        let s = Size::constant(512).div(&Size::constant(4));
        assert_eq!(s.as_constant(), Some(128));
        let odd = Size::constant(512).div(&Size::constant(3));
        assert_eq!(odd.as_constant(), None);
        assert_eq!(odd.eval(&|_| None), None);
        let dk = Size::var("dm").div(&Size::var("head"));
        let env = |v: &str| match v {
            "dm" => Some(512),
            "head" => Some(4),
            _ => None,
        };
        assert_eq!(dk.eval(&env), Some(128));
        assert_eq!(Size::var("dm").div(&Size::constant(3)).eval(&env), None);
    }
}
