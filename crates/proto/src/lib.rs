//! Tollgate's v1 gRPC contracts, generated from `proto/` at build time.

pub mod codec;

/// `tollgate.keys.v1`: accounts, applications, groups, models, keys, audit, key state.
pub mod keys {
    pub mod v1 {
        tonic::include_proto!("tollgate.keys.v1");
    }
}

/// `tollgate.authz.v1`: the Authorize hot path.
pub mod authz {
    pub mod v1 {
        tonic::include_proto!("tollgate.authz.v1");
    }
}

/// `tollgate.metering.v1`: usage reports, balances and usage queries.
pub mod metering {
    pub mod v1 {
        tonic::include_proto!("tollgate.metering.v1");
    }
}

/// `tollgate.bench.v1`: benchmark baselines, served only on request.
pub mod bench {
    pub mod v1 {
        tonic::include_proto!("tollgate.bench.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Tollgate proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tollgate_descriptor");

/// Envoy's `envoy.service.auth.v3.Authorization` and its imports, for reflection on the
/// servers that answer Envoy's `Check`.
pub const ENVOY_FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("envoy_descriptor");

/// Conversions between proto well-known time types and microseconds since the Unix epoch.
pub mod time {
    use prost_types::{Duration, Timestamp};

    const MICROS_PER_SECOND: i64 = 1_000_000;

    /// A proto timestamp of a time in microseconds.
    pub fn timestamp(micros: i64) -> Timestamp {
        Timestamp {
            seconds: micros.div_euclid(MICROS_PER_SECOND),
            nanos: (micros.rem_euclid(MICROS_PER_SECOND) * 1000) as i32,
        }
    }

    /// Microseconds of a proto timestamp; `None` when it is outside years 1–9999 or its nanos
    /// are not normalised.
    pub fn timestamp_micros(ts: &Timestamp) -> Option<i64> {
        if !(0..1_000_000_000).contains(&ts.nanos) || !(-62_135_596_800..=253_402_300_799).contains(&ts.seconds) {
            return None;
        }
        Some(ts.seconds * MICROS_PER_SECOND + i64::from(ts.nanos) / 1000)
    }

    /// A proto duration of microseconds.
    pub fn duration(micros: i64) -> Duration {
        Duration { seconds: micros / MICROS_PER_SECOND, nanos: ((micros % MICROS_PER_SECOND) * 1000) as i32 }
    }

    /// Microseconds of a proto duration; `None` when its parts disagree in sign or overflow.
    pub fn duration_micros(d: &Duration) -> Option<i64> {
        if d.nanos.abs() >= 1_000_000_000 || (d.seconds > 0 && d.nanos < 0) || (d.seconds < 0 && d.nanos > 0) {
            return None;
        }
        d.seconds.checked_mul(MICROS_PER_SECOND)?.checked_add(i64::from(d.nanos) / 1000)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn timestamps_round_trip_including_before_the_epoch() {
            for micros in [0, 1, -1, 1_700_000_000_123_456, -86_400_000_001] {
                assert_eq!(timestamp_micros(&timestamp(micros)), Some(micros));
            }
            assert_eq!(timestamp_micros(&Timestamp { seconds: 0, nanos: -1 }), None);
            assert_eq!(timestamp_micros(&Timestamp { seconds: i64::MAX, nanos: 0 }), None);
        }

        #[test]
        fn durations() {
            assert_eq!(duration_micros(&Duration { seconds: 2, nanos: 500_000_000 }), Some(2_500_000));
            assert_eq!(duration_micros(&duration(2_500_000)), Some(2_500_000));
            assert_eq!(duration_micros(&Duration { seconds: -1, nanos: 0 }), Some(-1_000_000));
            assert_eq!(duration_micros(&Duration { seconds: 1, nanos: -1 }), None);
            assert_eq!(duration_micros(&Duration { seconds: i64::MAX, nanos: 0 }), None);
        }
    }
}
