//! Money: integer credits and exact decimal price multipliers.
//!
//! Credits are `i64`; prices are integer credits per million tokens; a group's multiplier is
//! an exact decimal. The cost of a call is rounded **up** to a whole credit, so a stream of
//! tiny calls can never be free.

use std::str::FromStr;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

/// Largest credit amount any setting may hold (10^15 credits, 2 billion USD at the default
/// rate): far from `i64::MAX`, so sums of many of them cannot overflow.
pub const MAX_CREDITS: i64 = 1_000_000_000_000_000;

/// Default credits per US dollar.
pub const DEFAULT_CREDITS_PER_USD: i64 = 500_000;

/// A group's price factor: 0 to 1000 with at most 6 decimal places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceMultiplier(Decimal);

/// Why a multiplier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMultiplier {
    #[error("must be a decimal number such as \"1\" or \"0.85\"")]
    NotADecimal,
    #[error("must be between 0 and 1000")]
    OutOfRange,
    #[error("may have at most 6 decimal places")]
    TooPrecise,
}

impl PriceMultiplier {
    /// The multiplier 1.
    pub const ONE: PriceMultiplier = PriceMultiplier(Decimal::ONE);

    /// Parses and checks a decimal string.
    pub fn parse(text: &str) -> Result<Self, BadMultiplier> {
        let value = Decimal::from_str(text.trim()).map_err(|_| BadMultiplier::NotADecimal)?;
        if value.is_sign_negative() || value > Decimal::from(1000) {
            return Err(BadMultiplier::OutOfRange);
        }
        if value.normalize().scale() > 6 {
            return Err(BadMultiplier::TooPrecise);
        }
        Ok(Self(value.normalize()))
    }

    /// The multiplier in millionths, exact.
    pub fn micros(self) -> i64 {
        (self.0 * Decimal::from(1_000_000)).to_i64().expect("at most 1000 × 10^6")
    }
}

impl std::fmt::Display for PriceMultiplier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Credits for `tokens` at `price_per_mtok` credits per million tokens, times a multiplier
/// given in millionths, rounded up. Saturates at `i64::MAX` rather than overflowing.
pub fn cost_credits(tokens: i64, price_per_mtok: i64, multiplier_micros: i64) -> i64 {
    let denominator: i128 = 1_000_000 * 1_000_000;
    i128::from(tokens.max(0))
        .checked_mul(i128::from(price_per_mtok.max(0)))
        .and_then(|n| n.checked_mul(i128::from(multiplier_micros.max(0))))
        .map(|n| (n + denominator - 1) / denominator)
        .and_then(|credits| i64::try_from(credits).ok())
        .unwrap_or(i64::MAX)
}

/// A model's prices in credits per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPrices {
    pub input: i64,
    pub output: i64,
    pub cached_input: i64,
}

/// Tokens one call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Prompt tokens not served from cache.
    pub input: i64,
    pub output: i64,
    pub cached_input: i64,
}

/// What a call costs: every token kind at its price, summed exactly, times the multiplier in
/// millionths, rounded **up once** to a whole credit (rounding each kind separately would
/// overcharge by up to two credits). Saturates at `i64::MAX`.
pub fn usage_cost(usage: TokenUsage, prices: TokenPrices, multiplier_micros: i64) -> i64 {
    let part = |tokens: i64, price: i64| i128::from(tokens.max(0)).checked_mul(i128::from(price.max(0)));
    let denominator: i128 = 1_000_000 * 1_000_000;
    part(usage.input, prices.input)
        .zip(part(usage.output, prices.output))
        .zip(part(usage.cached_input, prices.cached_input))
        .and_then(|((a, b), c)| a.checked_add(b)?.checked_add(c))
        .and_then(|sum| sum.checked_mul(i128::from(multiplier_micros.max(0))))
        .map(|n| (n + denominator - 1) / denominator)
        .and_then(|credits| i64::try_from(credits).ok())
        .unwrap_or(i64::MAX)
}

/// A credit price per million tokens in USD, as an exact decimal string.
pub fn credits_to_usd(credits: i64, credits_per_usd: i64) -> String {
    if credits_per_usd <= 0 {
        return "0".to_owned();
    }
    (Decimal::from(credits) / Decimal::from(credits_per_usd)).normalize().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn multipliers() {
        assert_eq!(PriceMultiplier::parse("1").unwrap().micros(), 1_000_000);
        assert_eq!(PriceMultiplier::parse("0.85").unwrap().micros(), 850_000);
        assert_eq!(PriceMultiplier::parse("1.250000").unwrap().to_string(), "1.25");
        assert_eq!(PriceMultiplier::parse("0").unwrap().micros(), 0);
        assert_eq!(PriceMultiplier::parse("1000").unwrap().micros(), 1_000_000_000);
        assert_eq!(PriceMultiplier::parse("-1"), Err(BadMultiplier::OutOfRange));
        assert_eq!(PriceMultiplier::parse("1000.000001"), Err(BadMultiplier::OutOfRange));
        assert_eq!(PriceMultiplier::parse("0.0000001"), Err(BadMultiplier::TooPrecise));
        assert_eq!(PriceMultiplier::parse("abc"), Err(BadMultiplier::NotADecimal));
        assert_eq!(PriceMultiplier::parse("NaN"), Err(BadMultiplier::NotADecimal));
    }

    /// The rounding table: cost = ceil(tokens × price × multiplier / 10^6).
    #[test]
    fn rounding_table() {
        let cases = [
            // tokens, credits per 1M, multiplier, expected credits
            (1_000_000, 75_000, "1", 75_000),
            (1, 75_000, "1", 1),      // 0.075 rounds up
            (0, 75_000, "1", 0),      // nothing used, nothing charged
            (13, 1_000_000, "1", 13), // exact
            (1, 1_000_000, "0.5", 1), // 0.5 rounds up
            (3, 1_000_000, "0.5", 2), // 1.5 rounds up
            (1_000, 2_500_000, "1.2", 3_000),
            (333, 1_000, "1", 1),          // 0.333 rounds up
            (1_000_000, 1, "0.000001", 1), // 10^-6 credits rounds up to one
            (1_000_000, 0, "3", 0),        // free model
        ];
        for (tokens, price, multiplier, expected) in cases {
            let m = PriceMultiplier::parse(multiplier).unwrap().micros();
            assert_eq!(cost_credits(tokens, price, m), expected, "{tokens} × {price} × {multiplier}");
        }
    }

    /// The rounding table of a whole call: the exact sum over token kinds, rounded up once.
    #[test]
    fn usage_rounding_table() {
        let prices = TokenPrices { input: 1_000_000, output: 2_000_000, cached_input: 250_000 };
        let cases = [
            // input, output, cached, multiplier, expected credits
            (0, 0, 0, "1", 0),                         // nothing used, nothing charged
            (1, 0, 0, "1", 1),                         // exact
            (1, 1, 0, "1", 3),                         // 1 + 2
            (0, 0, 1, "1", 1),                         // 0.25 rounds up
            (0, 0, 4, "1", 1),                         // 4 × 0.25 = 1, exact
            (1, 0, 2, "1", 2),                         // 1 + 0.5 rounds up once, not 1 + 1
            (1, 1, 1, "1.5", 5),                       // (1 + 2 + 0.25) × 1.5 = 4.875
            (10, 10, 10, "0.1", 4),                    // 32.5 × 0.1 = 3.25
            (1_000_000, 500_000, 0, "0.8", 1_600_000), // (1e6 + 1e6) × 0.8
            (7, 3, 0, "0", 0),                         // a free group
        ];
        for (input, output, cached, multiplier, expected) in cases {
            let m = PriceMultiplier::parse(multiplier).unwrap().micros();
            let usage = TokenUsage { input, output, cached_input: cached };
            assert_eq!(usage_cost(usage, prices, m), expected, "{usage:?} × {multiplier}");
        }
        let dear = TokenPrices { input: i64::MAX, output: i64::MAX, cached_input: i64::MAX };
        let huge = TokenUsage { input: i64::MAX, output: i64::MAX, cached_input: i64::MAX };
        assert_eq!(usage_cost(huge, dear, 1_000_000_000), i64::MAX, "saturates");
    }

    #[test]
    fn usd_display() {
        assert_eq!(credits_to_usd(75_000, 500_000), "0.15");
        assert_eq!(credits_to_usd(5_000_000, 500_000), "10");
    }

    proptest! {
        #[test]
        fn cost_is_the_exact_ceiling(tokens in 0i64..10_000_000_000, price in 0i64..100_000_000, m in 0i64..1_000_000_000) {
            let cost = cost_credits(tokens, price, m);
            let exact = i128::from(tokens) * i128::from(price) * i128::from(m);
            let d: i128 = 1_000_000_000_000;
            prop_assert!(i128::from(cost) * d >= exact);
            prop_assert!(i128::from(cost) * d < exact + d);
        }

        #[test]
        fn usage_cost_is_the_exact_ceiling_of_the_sum(
            input in 0i64..1_000_000_000, output in 0i64..1_000_000_000, cached in 0i64..1_000_000_000,
            pi in 0i64..100_000_000, po in 0i64..100_000_000, pc in 0i64..100_000_000, m in 0i64..1_000_000_000,
        ) {
            let cost = usage_cost(
                TokenUsage { input, output, cached_input: cached },
                TokenPrices { input: pi, output: po, cached_input: pc },
                m,
            );
            let exact = (i128::from(input) * i128::from(pi) + i128::from(output) * i128::from(po)
                + i128::from(cached) * i128::from(pc)) * i128::from(m);
            let d: i128 = 1_000_000_000_000;
            prop_assert!(i128::from(cost) * d >= exact);
            prop_assert!(i128::from(cost) * d < exact + d);
        }

        #[test]
        fn cost_never_panics(tokens: i64, price: i64, m: i64) {
            prop_assert!(cost_credits(tokens, price, m) >= 0);
        }

        #[test]
        fn cost_is_monotonic_in_tokens(tokens in 0i64..1_000_000_000, price in 0i64..100_000_000, m in 0i64..1_000_000_000) {
            prop_assert!(cost_credits(tokens, price, m) <= cost_credits(tokens + 1, price, m));
        }
    }
}
