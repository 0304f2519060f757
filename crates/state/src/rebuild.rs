//! Knowing that the counters in Redis are the ones rebuilt from the ledger.
//!
//! Redis keeps the counters authz decides money on, but Postgres keeps the truth. If Redis
//! loses its data (restarted without persistence, a failover to a replica that had not synced)
//! the counters read as untouched: quotas and budgets look unspent, balances empty. To notice,
//! every rebuild from the ledger (`reconcile`) ends by writing a marker into each of the 16,384
//! Redis Cluster slots, `P:{<tag>}:rebuilt`, where `<tag>` is a short string that hashes to
//! that slot. Every counter script also takes the marker of its account's slot and refuses to
//! count when it is missing, so a lost marker is seen by the very next call on that slot, on a
//! standalone server and on any cluster node alike; metering notices it too (a sample of
//! markers, every second) and rebuilds, one process at a time.

use std::sync::OnceLock;

/// Redis Cluster's slot count.
pub const SLOTS: usize = 16_384;

/// How many markers a health check reads: every 256th slot, so each node of any cluster of
/// up to 64 primaries is looked at.
const SAMPLE_EVERY: usize = 256;

/// Redis's slot of a hash tag (CRC16/XMODEM modulo the slot count).
pub fn slot_of(tag: &str) -> usize {
    usize::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % SLOTS
}

/// For each slot, the shortest decimal string that hashes to it.
fn slot_tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags: Vec<Option<String>> = vec![None; SLOTS];
        let mut missing = SLOTS;
        let mut n = 0u64;
        while missing > 0 {
            let tag = n.to_string();
            let slot = &mut tags[slot_of(&tag)];
            if slot.is_none() {
                *slot = Some(tag);
                missing -= 1;
            }
            n += 1;
        }
        tags.into_iter().map(|tag| tag.expect("every slot has a tag")).collect()
    })
}

/// The names of the markers under a key prefix.
#[derive(Debug, Clone)]
pub struct RebuildMarkers {
    prefix: String,
}

impl RebuildMarkers {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    fn of_slot(&self, slot: usize) -> String {
        format!("{}:{{{}}}:rebuilt", self.prefix, slot_tags()[slot])
    }

    /// The marker in the slot of an account's counters (`P:{account}:…`).
    pub fn for_account(&self, account_id: &str) -> String {
        self.of_slot(slot_of(account_id))
    }

    /// Every slot's marker.
    pub fn all(&self) -> Vec<String> {
        (0..SLOTS).map(|slot| self.of_slot(slot)).collect()
    }

    /// The markers a health check reads.
    pub fn sample(&self) -> Vec<String> {
        (0..SLOTS).step_by(SAMPLE_EVERY).map(|slot| self.of_slot(slot)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_gets_a_marker_that_hashes_to_it() {
        let markers = RebuildMarkers::new("tg");
        let all = markers.all();
        assert_eq!(all.len(), SLOTS);
        for (slot, marker) in all.iter().enumerate() {
            let tag = marker.split(['{', '}']).nth(1).unwrap();
            assert_eq!(slot_of(tag), slot, "{marker}");
        }
        // Known slots (CLUSTER KEYSLOT): "foo" is 12182, "{acme}" hashes "acme".
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(markers.for_account("acme"), all[slot_of("acme")]);
        assert_eq!(markers.sample().len(), SLOTS / SAMPLE_EVERY);
    }
}
