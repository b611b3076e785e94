//! A request's headers as the decision reads them, and Envoy's serialized header map
//! (the proxy-wasm ABI) read in place: one host call hands the filter one buffer, and the
//! decision borrows names and values from it instead of copying each into its own
//! allocation.

/// One header: its name (lowercase, as Envoy lists it; pseudo-headers included) and value.
pub trait Header {
    fn name(&self) -> &str;
    fn value(&self) -> &[u8];
}

impl Header for (&str, &[u8]) {
    fn name(&self) -> &str {
        self.0
    }
    fn value(&self) -> &[u8] {
        self.1
    }
}

impl Header for (&str, &str) {
    fn name(&self) -> &str {
        self.0
    }
    fn value(&self) -> &[u8] {
        self.1.as_bytes()
    }
}

impl Header for (String, Vec<u8>) {
    fn name(&self) -> &str {
        &self.0
    }
    fn value(&self) -> &[u8] {
        &self.1
    }
}

/// Why a serialized header map could not be read. Envoy never sends one, but the buffer
/// crosses the VM boundary, so it is read as hostile: a bad one refuses the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Shorter than its count and sizes say.
    Truncated,
    /// A name or value is not followed by its NUL.
    Unterminated,
    /// A header name that is not text (Envoy only passes valid header names on).
    NameNotText,
}

impl MapError {
    pub fn description(self) -> &'static str {
        match self {
            MapError::Truncated => "unreadable request headers (truncated)",
            MapError::Unterminated => "unreadable request headers (unterminated)",
            MapError::NameNotText => "unreadable request headers (a name is not text)",
        }
    }
}

fn u32_at(buf: &[u8], at: usize) -> Result<usize, MapError> {
    let bytes = buf.get(at..at.checked_add(4).ok_or(MapError::Truncated)?);
    let bytes: [u8; 4] = bytes
        .and_then(|b| b.try_into().ok())
        .ok_or(MapError::Truncated)?;
    usize::try_from(u32::from_le_bytes(bytes)).map_err(|_| MapError::Truncated)
}

/// Reads a serialized map: a little-endian `u32` count, then a name size and a value size
/// (`u32` each) per header, then each name and value followed by a NUL. An empty buffer is
/// an empty map.
pub fn parse(buf: &[u8]) -> Result<Vec<(&str, &[u8])>, MapError> {
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    let count = u32_at(buf, 0)?;
    // The size table alone must fit, so a forged count cannot make a huge allocation.
    let table_end = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|&end| end <= buf.len())
        .ok_or(MapError::Truncated)?;
    let mut pairs = Vec::with_capacity(count);
    let mut at = table_end;
    let mut take = |size: usize| -> Result<&[u8], MapError> {
        let end = at.checked_add(size).ok_or(MapError::Truncated)?;
        let bytes = buf.get(at..end).ok_or(MapError::Truncated)?;
        match buf.get(end) {
            Some(0) => {}
            Some(_) => return Err(MapError::Unterminated),
            None => return Err(MapError::Truncated),
        }
        at = end + 1;
        Ok(bytes)
    };
    for i in 0..count {
        let name_size = u32_at(buf, 4 + i * 8)?;
        let value_size = u32_at(buf, 8 + i * 8)?;
        let name = std::str::from_utf8(take(name_size)?).map_err(|_| MapError::NameNotText)?;
        let value = take(value_size)?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// Writes headers in the same format, for the host calls that take a map (a local answer).
pub fn serialize(headers: &[impl Header]) -> Vec<u8> {
    let size = 4 + headers
        .iter()
        .map(|h| 10 + h.name().len() + h.value().len())
        .sum::<usize>();
    let mut buf = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    buf.extend(len(headers.len()));
    for h in headers {
        buf.extend(len(h.name().len()));
        buf.extend(len(h.value().len()));
    }
    for h in headers {
        buf.extend(h.name().as_bytes());
        buf.push(0);
        buf.extend(h.value());
        buf.push(0);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Envoy writes (and the proxy-wasm SDK writes for the other direction).
    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut buf = (pairs.len() as u32).to_le_bytes().to_vec();
        for (name, value) in pairs {
            buf.extend((name.len() as u32).to_le_bytes());
            buf.extend((value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            buf.extend(*name);
            buf.push(0);
            buf.extend(*value);
            buf.push(0);
        }
        buf
    }

    #[test]
    fn what_serialize_writes_parse_reads_back() {
        let headers = [
            (":status", "401"),
            ("www-authenticate", "Bearer realm=\"a\""),
            ("x", ""),
        ];
        let buf = super::serialize(&headers);
        assert_eq!(
            buf,
            serialize(&headers.map(|(n, v)| (n.as_bytes(), v.as_bytes())))
        );
        let back: Vec<(&str, &str)> = parse(&buf)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (n, std::str::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(back, headers);
        let none: [(&str, &str); 0] = [];
        assert_eq!(super::serialize(&none), 0u32.to_le_bytes());
    }

    #[test]
    fn reads_names_and_values_in_order_without_copying() {
        let buf = serialize(&[
            (b":method", b"GET"),
            (b":path", b"/a?b=c"),
            (b"authorization", b"Bearer k"),
            (b"x-empty", b""),
            (b"x-bytes", b"\xff\x00\x7f"),
            (b"authorization", b"Bearer second"),
        ]);
        let pairs = parse(&buf).unwrap();
        assert_eq!(
            pairs,
            vec![
                (":method", &b"GET"[..]),
                (":path", b"/a?b=c"),
                ("authorization", b"Bearer k"),
                ("x-empty", b""),
                ("x-bytes", b"\xff\x00\x7f"),
                ("authorization", b"Bearer second"),
            ]
        );
        let value = pairs[2].1;
        assert!(buf.as_ptr_range().contains(&value.as_ptr()));
    }

    #[test]
    fn an_empty_buffer_and_a_zero_count_are_empty_maps() {
        assert_eq!(parse(&[]).unwrap(), vec![]);
        assert_eq!(parse(&serialize(&[])).unwrap(), vec![]);
    }

    #[test]
    fn refuses_every_truncation_of_a_good_map() {
        let buf = serialize(&[(b"a", b"1"), (b"bb", b"22")]);
        for len in 1..buf.len() {
            assert!(
                parse(&buf[..len]).is_err(),
                "accepted {len} of {} bytes",
                buf.len()
            );
        }
        assert!(parse(&buf).is_ok());
    }

    #[test]
    fn refuses_a_count_larger_than_the_buffer_without_allocating_for_it() {
        let mut buf = serialize(&[(b"a", b"1")]);
        buf[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&buf), Err(MapError::Truncated));
    }

    #[test]
    fn refuses_sizes_that_run_past_the_end_or_miss_their_nul() {
        let mut buf = serialize(&[(b"a", b"1")]);
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&buf), Err(MapError::Truncated));

        let mut buf = serialize(&[(b"ab", b"1")]);
        buf[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(parse(&buf), Err(MapError::Unterminated));
    }

    #[test]
    fn refuses_a_name_that_is_not_text() {
        let buf = serialize(&[(b"\xffname", b"v")]);
        assert_eq!(parse(&buf), Err(MapError::NameNotText));
    }

    #[test]
    fn both_header_forms_read_alike() {
        let owned = (String::from("a"), b"1".to_vec());
        let borrowed: (&str, &[u8]) = ("a", b"1");
        assert_eq!(owned.name(), borrowed.name());
        assert_eq!(owned.value(), borrowed.value());
    }
}
