//! Kubernetes resource quantities and the cgroup v2 values they become.
//!
//! Quantities are written as Kubernetes writes them: a decimal number with a binary suffix
//! (`Ki` `Mi` `Gi` `Ti` `Pi` `Ei`), a decimal one (`n` `u` `m` `k` `M` `G` `T` `P` `E`) or an
//! exponent (`129e6`). CPU is kept in millicores and memory in bytes, both rounded up, as
//! Kubernetes rounds.
//!
//! The cgroup values follow the kubelet and runc: `cpu.max` is the limit as a quota per
//! 100 ms period; `cpu.weight` comes from the request through the kubelet's CPU shares
//! (`millicores · 1024 / 1000`, at least 2) and runc's shares-to-weight mapping;
//! `memory.max` is the limit; `memory.swap.max` is 0 (containers never swap, as the
//! kubelet's default `NoSwap`); `pids.max` is the pod's limit or `max`.

/// The CFS period for `cpu.max`, in microseconds.
pub const CPU_PERIOD_MICROS: u64 = 100_000;
/// The smallest quota the kernel accepts, in microseconds.
pub const MIN_CPU_QUOTA_MICROS: u64 = 1_000;

/// Why a quantity cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a quantity: {reason} (write e.g. 500m or 2 for CPU, 64Mi or 1G for memory)"
)]
pub struct QuantityError {
    /// The text given.
    pub text: String,
    /// What is wrong.
    pub reason: String,
}

/// A quantity as an exact fraction `numerator / 10^scale`, before it is rounded to a unit.
fn parse(text: &str) -> Result<(u128, u32), QuantityError> {
    let refuse = |reason: &str| QuantityError {
        text: text.to_owned(),
        reason: reason.to_owned(),
    };
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(refuse("it does not start with a number"));
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.len() > 9 {
        return Err(refuse("more than 9 decimal places"));
    }
    let digits = format!("{whole}{fraction}");
    let mut value: u128 = digits
        .parse()
        .map_err(|_| refuse("the number is too large"))?;
    let mut scale = fraction.len() as u32;
    // Multiply by the suffix, keeping `value / 10^scale` exact.
    let (multiplier, divisor_exponent): (u128, u32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "n" => (1, 9),
        "u" => (1, 6),
        "m" => (1, 3),
        "k" => (1_000, 0),
        "M" => (1_000_000, 0),
        "G" => (1_000_000_000, 0),
        "T" => (1_000_000_000_000, 0),
        "P" => (1_000_000_000_000_000, 0),
        "E" => (1_000_000_000_000_000_000, 0),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: u32 = exponent[1..]
                .parse()
                .map_err(|_| refuse("the exponent is not a whole number"))?;
            if power > 18 {
                return Err(refuse("the exponent is larger than 18"));
            }
            (10u128.pow(power), 0)
        }
        other => return Err(refuse(&format!("unknown suffix {other:?}"))),
    };
    value = value
        .checked_mul(multiplier)
        .ok_or_else(|| refuse("the value is too large"))?;
    scale += divisor_exponent;
    Ok((value, scale))
}

/// Rounds `value / 10^scale · per_unit` up to a whole number.
fn round_up(text: &str, (value, scale): (u128, u32), per_unit: u128) -> Result<u64, QuantityError> {
    let divisor = 10u128.pow(scale);
    let scaled = value.checked_mul(per_unit).ok_or_else(|| QuantityError {
        text: text.to_owned(),
        reason: "the value is too large".into(),
    })?;
    let rounded = scaled.div_ceil(divisor);
    u64::try_from(rounded).map_err(|_| QuantityError {
        text: text.to_owned(),
        reason: "the value is too large".into(),
    })
}

/// CPU in millicores: `500m` is 500, `2` is 2000, `0.25` is 250.
pub fn cpu_millis(text: &str) -> Result<u64, QuantityError> {
    round_up(text, parse(text)?, 1_000)
}

/// Memory in bytes: `64Mi` is 67108864, `1G` is 1000000000.
pub fn memory_bytes(text: &str) -> Result<u64, QuantityError> {
    round_up(text, parse(text)?, 1)
}

/// A container's or pod's limits and requests, in the runtime's units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// `limits.cpu`, millicores.
    pub cpu_limit_millis: Option<u64>,
    /// `requests.cpu`, millicores (defaults to the limit, as Kubernetes defaults it).
    pub cpu_request_millis: Option<u64>,
    /// `limits.memory`, bytes.
    pub memory_limit_bytes: Option<u64>,
    /// The pod's process limit.
    pub pids_limit: Option<u64>,
}

/// The cgroup v2 files a container's cgroup is given, in the order they are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupValues {
    /// `cpu.max`: `QUOTA PERIOD` or `max PERIOD`.
    pub cpu_max: String,
    /// `cpu.weight`: 1 to 10000.
    pub cpu_weight: u64,
    /// `memory.max`: bytes or `max`.
    pub memory_max: String,
    /// `memory.swap.max`: always `0`.
    pub memory_swap_max: String,
    /// `pids.max`: a number or `max`.
    pub pids_max: String,
}

impl CgroupValues {
    /// The values for `resources`. Pure.
    pub fn of(resources: &Resources) -> CgroupValues {
        let cpu_max = match resources.cpu_limit_millis {
            Some(millis) => {
                let quota =
                    (millis.saturating_mul(CPU_PERIOD_MICROS) / 1_000).max(MIN_CPU_QUOTA_MICROS);
                format!("{quota} {CPU_PERIOD_MICROS}")
            }
            None => format!("max {CPU_PERIOD_MICROS}"),
        };
        let request = resources.cpu_request_millis.or(resources.cpu_limit_millis);
        let shares = request.map_or(2, |millis| (millis.saturating_mul(1024) / 1000).max(2));
        let cpu_weight = weight_of_shares(shares);
        let values = CgroupValues {
            cpu_max,
            cpu_weight,
            memory_max: resources
                .memory_limit_bytes
                .map_or_else(|| "max".to_owned(), |bytes| bytes.to_string()),
            memory_swap_max: "0".to_owned(),
            pids_max: resources
                .pids_limit
                .map_or_else(|| "max".to_owned(), |pids| pids.to_string()),
        };
        debug_assert!((1..=10_000).contains(&values.cpu_weight));
        values
    }

    /// `(file, value)` pairs, in the order they are written.
    pub fn files(&self) -> [(&'static str, String); 5] {
        [
            ("cpu.max", self.cpu_max.clone()),
            ("cpu.weight", self.cpu_weight.to_string()),
            ("memory.max", self.memory_max.clone()),
            ("memory.swap.max", self.memory_swap_max.clone()),
            ("pids.max", self.pids_max.clone()),
        ]
    }
}

/// runc's mapping of cgroup v1 CPU shares (2 to 262144) onto cgroup v2 weights (1 to
/// 10000).
pub fn weight_of_shares(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9_999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        assert_eq!(cpu_millis("500m"), Ok(500));
        assert_eq!(cpu_millis("2"), Ok(2000));
        assert_eq!(cpu_millis("0.25"), Ok(250));
        assert_eq!(cpu_millis("1.0005"), Ok(1001), "rounded up");
        assert_eq!(cpu_millis("100u"), Ok(1), "rounded up");
        assert_eq!(memory_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(memory_bytes("129e6"), Ok(129_000_000));
        assert_eq!(memory_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(memory_bytes("128974848"), Ok(128_974_848));
        for bad in ["", "Mi", "1.2.3", "-1", "5 Mi", "1Xi", "1e99"] {
            let error = memory_bytes(bad).unwrap_err();
            assert!(
                error.to_string().contains("write e.g. 500m"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn limits_become_the_kubelets_cgroup_values() {
        let values = CgroupValues::of(&Resources {
            cpu_limit_millis: Some(500),
            cpu_request_millis: None,
            memory_limit_bytes: Some(64 << 20),
            pids_limit: Some(100),
        });
        assert_eq!(values.cpu_max, "50000 100000");
        // The request defaults to the limit: 500m is 512 shares, weight 20 (as runc maps it).
        assert_eq!(values.cpu_weight, 20);
        assert_eq!(values.memory_max, (64u64 << 20).to_string());
        assert_eq!(values.memory_swap_max, "0");
        assert_eq!(values.pids_max, "100");
        let best_effort = CgroupValues::of(&Resources::default());
        assert_eq!(best_effort.cpu_max, "max 100000");
        assert_eq!(best_effort.cpu_weight, 1);
        assert_eq!(best_effort.memory_max, "max");
        assert_eq!(
            CgroupValues::of(&Resources {
                cpu_limit_millis: Some(1),
                ..Resources::default()
            })
            .cpu_max,
            "1000 100000"
        );
    }

    #[test]
    fn weights_stay_in_the_kernels_range() {
        bolero::check!().with_type::<u64>().for_each(|&shares| {
            let weight = weight_of_shares(shares);
            assert!((1..=10_000).contains(&weight));
            assert!(
                weight_of_shares(shares.saturating_add(1)) >= weight,
                "monotonic"
            );
        });
    }
}
