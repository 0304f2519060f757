//! What a model call does; keys may be limited to some capabilities.

/// A kind of model call. The numbers match `tollgate.keys.v1.Capability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    Text = 1,
    Image = 2,
    Embeddings = 3,
    Tts = 4,
    Stt = 5,
    WebSearch = 6,
}

impl Capability {
    /// Every capability, in number order.
    pub const ALL: [Capability; 6] = [
        Capability::Text,
        Capability::Image,
        Capability::Embeddings,
        Capability::Tts,
        Capability::Stt,
        Capability::WebSearch,
    ];

    /// The stable lower-case name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Text => "text",
            Capability::Image => "image",
            Capability::Embeddings => "embeddings",
            Capability::Tts => "tts",
            Capability::Stt => "stt",
            Capability::WebSearch => "web_search",
        }
    }

    /// Parses the storage name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Maps the proto enum number; 0 (unspecified) and unknown numbers are `None`.
    pub fn from_number(number: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as i32 == number)
    }

    /// This capability as one bit, for set checks on the hot path.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of capabilities as bits; the empty set means "all" where a key stores it.
pub fn to_bits(capabilities: &[Capability]) -> u8 {
    capabilities.iter().fold(0, |bits, c| bits | c.bit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        for c in Capability::ALL {
            assert_eq!(Capability::from_name(c.as_str()), Some(c));
            assert_eq!(Capability::from_number(c as i32), Some(c));
        }
        assert_eq!(Capability::from_number(0), None);
        assert_eq!(Capability::from_number(99), None);
        assert_eq!(to_bits(&[Capability::Text, Capability::Tts]).count_ones(), 2);
    }
}
