//! Decoding replies from the network. dhcproto's option decoders assert on
//! lengths for options we never use (`debug_assert!`, plain subtraction);
//! a hostile server must not be able to reach those in PID 1, so only the
//! options we read are handed to it.

use dhcproto::v4::Message;
use dhcproto::Decodable;

/// op … file, then the magic cookie: where the options start.
const OPTIONS_AT: usize = 240;

/// The options the client reads (see `lease.rs` and `machine.rs`).
const USED: [u8; 12] = [1, 3, 6, 12, 15, 26, 51, 53, 54, 58, 59, 119];

/// A reply with every option we do not use removed; None when it is too
/// short or not DHCP at all.
pub(crate) fn decode_reply(bytes: &[u8]) -> Option<Message> {
    let (fixed, mut rest) = (bytes.get(..OPTIONS_AT)?, bytes.get(OPTIONS_AT..)?);
    if fixed.get(236..240)? != [99, 130, 83, 99] {
        return None;
    }
    let mut kept = fixed.to_vec();
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            0 => rest = tail,
            255 => break,
            _ => {
                let Some((&len, tail)) = tail.split_first() else {
                    break;
                };
                let Some(value) = tail.get(..usize::from(len)) else {
                    break;
                };
                if USED.contains(&code) {
                    kept.extend_from_slice(&[code, len]);
                    kept.extend_from_slice(value);
                }
                rest = tail.get(usize::from(len)..).unwrap_or_default();
            }
        }
    }
    kept.push(255);
    Message::from_bytes(&kept).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
    use dhcproto::Encodable;

    #[test]
    fn options_we_use_survive_and_others_are_dropped() {
        let mut m = Message::default();
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        m.opts_mut().insert(DhcpOption::AddressLeaseTime(600));
        m.opts_mut().insert(DhcpOption::RapidCommit);
        let bytes = m.to_vec().unwrap();
        let back = decode_reply(&bytes).unwrap();
        assert_eq!(back.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(
            back.opts().get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(600))
        );
        assert!(back.opts().get(OptionCode::RapidCommit).is_none());
    }

    #[test]
    fn options_dhcproto_would_assert_on_are_never_decoded() {
        let mut m = Message::default();
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        let mut bytes = m.to_vec().unwrap();
        bytes.pop(); // END
                     // Rapid Commit with a length, the status-code option with none.
        bytes.extend_from_slice(&[80, 2, 1, 2, 151, 0, 255]);
        assert!(decode_reply(&bytes).is_some());
    }

    #[test]
    fn short_or_foreign_packets_are_refused() {
        assert!(decode_reply(&[]).is_none());
        assert!(decode_reply(&[0u8; 300]).is_none(), "no magic cookie");
    }
}
