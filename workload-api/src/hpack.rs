//! An HPACK header block decoder (RFC 7541) for the `:authority` adapter.
//!
//! [`Decoder`] turns the header blocks one HTTP/2 client sends into header fields, keeping the
//! dynamic table that the client's encoder shares with it across blocks. It decodes integers and
//! strings (section 5), Huffman-coded strings (section 5.2, Appendix B) with tables built at
//! compile time, the static table (Appendix A), every field representation (section 6) and
//! dynamic table size updates (section 6.3), and refuses a decoded header list larger than a
//! bound the caller sets before allocating the strings that would exceed it.
//!
//! Fields are handed to a callback as borrowed slices: a field that is indexed, or whose strings
//! are not Huffman-coded, costs no allocation; a field added to the dynamic table costs one.

use std::collections::VecDeque;

/// Why a header block is not valid HPACK, or is refused. Every case is a connection error
/// (RFC 9113, section 4.3: `COMPRESSION_ERROR`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HpackError {
    /// The block ends in the middle of an integer.
    #[error("header block ends inside an integer")]
    TruncatedInteger,
    /// A string is longer than what is left of the block.
    #[error("string of {len} bytes is longer than the {available} bytes left in the header block")]
    TruncatedString {
        /// The length the string claims.
        len: usize,
        /// Bytes left in the block.
        available: usize,
    },
    /// An integer exceeds `u32::MAX` or takes more continuation bytes than that needs.
    #[error("integer in the header block exceeds {max}", max = u32::MAX)]
    IntegerOverflow,
    /// Index 0 in an indexed header field (section 6.1).
    #[error("table index 0 is not a valid header field index")]
    ZeroIndex,
    /// An index past the end of the static and dynamic tables (section 2.3.3).
    #[error(
        "table index {index} is beyond the {entries} entries of the static and dynamic tables"
    )]
    IndexOutOfRange {
        /// The index the block used.
        index: usize,
        /// Entries in both tables together.
        entries: usize,
    },
    /// More than 7 bits of padding at the end of a Huffman-coded string (section 5.2).
    #[error("huffman padding of {bits} bits is longer than 7 bits")]
    HuffmanPaddingTooLong {
        /// Bits left after the last whole code.
        bits: u32,
    },
    /// Padding at the end of a Huffman-coded string that is not all ones (section 5.2).
    #[error("huffman padding {padding:#b} of {bits} bits is not the start of the eos code")]
    HuffmanPaddingNotEos {
        /// The padding bits.
        padding: u8,
        /// How many there are.
        bits: u32,
    },
    /// The EOS symbol inside a Huffman-coded string (section 5.2).
    #[error("huffman-coded string contains the eos symbol")]
    HuffmanEos,
    /// A dynamic table size update above the size the decoder allows (section 6.3).
    #[error("dynamic table size update to {size} bytes exceeds the limit of {limit} bytes")]
    TableSizeAboveLimit {
        /// The size asked for.
        size: usize,
        /// The decoder's limit.
        limit: usize,
    },
    /// A dynamic table size update after the first header field of a block (section 4.2).
    #[error("dynamic table size update to {size} bytes follows a header field")]
    LateTableSizeUpdate {
        /// The size asked for.
        size: usize,
    },
    /// The decoded header list, counted as name + value + 32 bytes per field, exceeds the
    /// caller's bound.
    #[error("decoded header list exceeds the limit of {limit} bytes")]
    DecodedTooLarge {
        /// The caller's bound.
        limit: usize,
    },
}

/// Decodes the header blocks of one connection direction, keeping its dynamic table.
#[derive(Debug)]
pub(crate) struct Decoder {
    table: DynamicTable,
    /// The largest table size the peer may ask for: the SETTINGS_HEADER_TABLE_SIZE we announced.
    size_limit: usize,
    /// Scratch space for Huffman-coded names and values, reused across fields.
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Decoder {
    /// A decoder whose dynamic table starts at, and may never grow beyond, `size_limit` bytes.
    pub(crate) fn new(size_limit: usize) -> Self {
        Self {
            table: DynamicTable::new(size_limit),
            size_limit,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Decodes one complete header block (HEADERS plus CONTINUATION payloads), calling
    /// `on_field(name, value)` for each field in order.
    ///
    /// `max_list_size` bounds the decoded list, counted as name + value + 32 bytes per field
    /// (as SETTINGS_MAX_HEADER_LIST_SIZE is); a string that would exceed it is refused before
    /// it is copied or decoded past the bound.
    ///
    /// # Errors
    ///
    /// [`HpackError`] when the block is not valid HPACK or exceeds `max_list_size`. Fields
    /// before the error have been reported, and the dynamic table may hold some of the block's
    /// entries: after an error the connection must be closed.
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        max_list_size: usize,
        mut on_field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let Self {
            table,
            size_limit,
            name_buf,
            value_buf,
        } = self;
        let mut input = Input {
            bytes: block,
            pos: 0,
        };
        let mut budget = Budget {
            limit: max_list_size,
            left: max_list_size,
        };
        let mut seen_field = false;

        while let Some(first) = input.peek() {
            // Section 6: the leading bits of the first byte select the representation.
            if first & 0x80 != 0 {
                let index = input.integer(7)?;
                let (name, value) = table.field(index)?;
                budget.charge(name.len() + value.len() + ENTRY_OVERHEAD)?;
                on_field(name, value);
            } else if first & 0xe0 == 0x20 {
                let size = input.integer(5)?;
                if seen_field {
                    return Err(HpackError::LateTableSizeUpdate { size });
                }
                if size > *size_limit {
                    return Err(HpackError::TableSizeAboveLimit {
                        size,
                        limit: *size_limit,
                    });
                }
                table.set_max_size(size);
                continue;
            } else {
                // With incremental indexing (01), without indexing (0000) or never indexed
                // (0001). The adapter re-encodes every field itself, so the last two are alike.
                let indexing = first & 0xc0 == 0x40;
                let name_index = input.integer(if indexing { 6 } else { 4 })?;
                let name = if name_index == 0 {
                    input.string(name_buf, &budget, 0)?
                } else {
                    table.field(name_index)?.0
                };
                let value = input.string(value_buf, &budget, name.len())?;
                budget.charge(name.len() + value.len() + ENTRY_OVERHEAD)?;
                on_field(name, value);
                if indexing {
                    let entry = Entry::new(name, value);
                    table.insert(entry);
                }
            }
            seen_field = true;
        }
        Ok(())
    }
}

/// The per-entry overhead of section 4.1, also used by SETTINGS_MAX_HEADER_LIST_SIZE.
const ENTRY_OVERHEAD: usize = 32;

/// The most continuation bytes an integer may take: enough for any value up to `u32::MAX`.
const MAX_INTEGER_CONTINUATIONS: usize = 5;

/// What is left of the caller's bound on the decoded header list.
struct Budget {
    limit: usize,
    left: usize,
}

impl Budget {
    /// Takes `size` bytes from the budget.
    fn charge(&mut self, size: usize) -> Result<(), HpackError> {
        if size > self.left {
            return Err(self.exceeded());
        }
        self.left -= size;
        Ok(())
    }

    fn exceeded(&self) -> HpackError {
        HpackError::DecodedTooLarge { limit: self.limit }
    }

    /// The longest string that may still be decoded in a field whose other strings total
    /// `other` bytes.
    fn left_for_strings(&self, other: usize) -> usize {
        self.left.saturating_sub(ENTRY_OVERHEAD + other)
    }
}

/// A cursor over a header block.
struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next_byte(&mut self) -> Result<u8, HpackError> {
        let byte = self.peek().ok_or(HpackError::TruncatedInteger)?;
        self.pos += 1;
        Ok(byte)
    }

    /// An integer with an N-bit prefix (section 5.1); the bits above the prefix are ignored.
    fn integer(&mut self, prefix_bits: u8) -> Result<usize, HpackError> {
        let max_prefix = (1u8 << prefix_bits) - 1;
        let prefix = self.next_byte()? & max_prefix;
        if prefix < max_prefix {
            return Ok(usize::from(prefix));
        }

        let mut value = u64::from(max_prefix);
        for continuation in 0..MAX_INTEGER_CONTINUATIONS {
            let byte = self.next_byte()?;
            value += u64::from(byte & 0x7f) << (7 * continuation);
            if value > u64::from(u32::MAX) {
                return Err(HpackError::IntegerOverflow);
            }
            if byte & 0x80 == 0 {
                return usize::try_from(value).map_err(|_| HpackError::IntegerOverflow);
            }
        }
        Err(HpackError::IntegerOverflow)
    }

    /// A string literal (section 5.2): borrowed from the block when it is raw, decoded into
    /// `buf` when it is Huffman-coded. Refused as soon as it is longer than what `budget` leaves
    /// for a field whose other string has `other` bytes.
    fn string<'s>(
        &mut self,
        buf: &'s mut Vec<u8>,
        budget: &Budget,
        other: usize,
    ) -> Result<&'s [u8], HpackError>
    where
        'a: 's,
    {
        let max_len = budget.left_for_strings(other);
        let huffman = self.peek().is_some_and(|byte| byte & 0x80 != 0);
        let len = self.integer(7)?;
        let available = self.bytes.len() - self.pos;
        if len > available {
            return Err(HpackError::TruncatedString { len, available });
        }
        let raw = &self.bytes[self.pos..self.pos + len];
        self.pos += len;

        if !huffman {
            if len > max_len {
                return Err(budget.exceeded());
            }
            return Ok(raw);
        }
        buf.clear();
        decode_huffman(raw, buf, max_len).map_err(|error| match error {
            HuffmanError::TooLong => budget.exceeded(),
            HuffmanError::Invalid(error) => error,
        })?;
        Ok(buf)
    }
}

// === Huffman code ===

/// Why a Huffman-coded string could not be decoded.
enum HuffmanError {
    /// The decoded string would exceed the length allowed.
    TooLong,
    /// The string is not valid.
    Invalid(HpackError),
}

/// Decodes a Huffman-coded string (section 5.2) onto `out`, which may grow by at most `max_len`
/// bytes.
fn decode_huffman(input: &[u8], out: &mut Vec<u8>, max_len: usize) -> Result<(), HuffmanError> {
    // Every symbol takes at least 5 bits.
    out.reserve((input.len() * 8 / usize::from(HUFFMAN.min_len)).min(max_len));
    let end = out.len() + max_len;

    // `bits` low bits of `acc` are input not yet decoded; bits above them are stale.
    let mut acc = 0u64;
    let mut bits = 0u32;
    let mut bytes = input.iter();
    loop {
        while bits <= 56 {
            let Some(&byte) = bytes.next() else { break };
            acc = acc << 8 | u64::from(byte);
            bits += 8;
        }
        if bits == 0 {
            return Ok(());
        }

        // The next 30 bits, the longest code; past the end, filled with ones as padding is.
        let window = if bits >= MAX_CODE_LEN {
            acc >> (bits - MAX_CODE_LEN)
        } else {
            acc << (MAX_CODE_LEN - bits) | ((1 << (MAX_CODE_LEN - bits)) - 1)
        };
        let (len, symbol) = HUFFMAN.lookup(window & CODE_MASK);

        if len > bits {
            // No whole code left: what remains is padding, the leading bits of EOS.
            if bits > 7 {
                return Err(HuffmanError::Invalid(HpackError::HuffmanPaddingTooLong {
                    bits,
                }));
            }
            let ones = (1u64 << bits) - 1;
            let padding = acc & ones;
            if padding != ones {
                return Err(HuffmanError::Invalid(HpackError::HuffmanPaddingNotEos {
                    // At most 7 bits.
                    padding: padding as u8,
                    bits,
                }));
            }
            return Ok(());
        }
        let Ok(byte) = u8::try_from(symbol) else {
            return Err(HuffmanError::Invalid(HpackError::HuffmanEos));
        };
        if out.len() == end {
            return Err(HuffmanError::TooLong);
        }
        out.push(byte);
        bits -= len;
    }
}

/// The symbol that ends a Huffman-coded string, and may only appear as padding.
const EOS: u16 = 256;

/// The 256 byte values and EOS.
const SYMBOLS: usize = EOS as usize + 1;

/// The longest code, in bits.
const MAX_CODE_LEN: u32 = 30;

const CODE_MASK: u64 = (1 << MAX_CODE_LEN) - 1;

/// Canonical Huffman decoding tables: the codes of one length are consecutive numbers, and
/// every code of a length is numerically below (left-aligned) every code of a greater length.
struct HuffmanTable {
    /// Per code length: one past the last code of that length, left-aligned to
    /// [`MAX_CODE_LEN`] bits; 0 for lengths no code has.
    limit: [u64; MAX_CODE_LEN as usize + 1],
    /// Per code length: the smallest code of that length.
    first_code: [u32; MAX_CODE_LEN as usize + 1],
    /// Per code length: where its symbols start in `symbols`.
    offset: [u16; MAX_CODE_LEN as usize + 1],
    /// Symbols by code length, then by code.
    symbols: [u16; SYMBOLS],
    /// The shortest code length.
    min_len: u8,
}

impl HuffmanTable {
    /// The length and symbol of the code at the start of `window`, a left-aligned 30-bit value.
    fn lookup(&self, window: u64) -> (u32, u16) {
        let mut len = usize::from(self.min_len);
        // The code is complete (checked when the table is built), so every window falls below
        // the limit of some length at most MAX_CODE_LEN.
        while len < MAX_CODE_LEN as usize && window >= self.limit[len] {
            len += 1;
        }
        let code = (window >> (MAX_CODE_LEN as usize - len)) as u32;
        let index = usize::from(self.offset[len]) + (code - self.first_code[len]) as usize;
        (len as u32, self.symbols[index])
    }

    /// Builds the decoding tables from [`HUFFMAN_CODES`], failing compilation if that table is
    /// not a complete canonical prefix code.
    const fn build() -> Self {
        const LENGTHS: usize = MAX_CODE_LEN as usize + 1;
        let mut count = [0u16; LENGTHS];
        let mut first_code = [u32::MAX; LENGTHS];
        let mut symbol = 0;
        while symbol < HUFFMAN_CODES.len() {
            let (code, len) = HUFFMAN_CODES[symbol];
            let len = len as usize;
            assert!(len >= 1 && len < LENGTHS && code < 1 << len);
            count[len] += 1;
            if code < first_code[len] {
                first_code[len] = code;
            }
            symbol += 1;
        }

        let mut offset = [0u16; LENGTHS];
        let mut limit = [0u64; LENGTHS];
        let mut min_len = 0;
        let mut next_offset = 0;
        // The first code of each length follows the last code of the previous one.
        let mut expected_first = 0u64;
        let mut len = 1;
        while len < LENGTHS {
            expected_first <<= 1;
            offset[len] = next_offset;
            next_offset += count[len];
            if count[len] > 0 {
                assert!(first_code[len] as u64 == expected_first);
                expected_first += count[len] as u64;
                limit[len] = expected_first << (MAX_CODE_LEN as usize - len);
                if min_len == 0 {
                    min_len = len as u8;
                }
            }
            len += 1;
        }
        // Complete: the longest codes end exactly at 2^30.
        assert!(expected_first == 1 << MAX_CODE_LEN);

        let mut symbols = [u16::MAX; SYMBOLS];
        let mut symbol = 0;
        while symbol < HUFFMAN_CODES.len() {
            let (code, len) = HUFFMAN_CODES[symbol];
            let len = len as usize;
            let index = offset[len] as usize + (code - first_code[len]) as usize;
            // Two symbols with one code, or codes of a length not consecutive.
            assert!(index < offset[len] as usize + count[len] as usize);
            assert!(symbols[index] == u16::MAX);
            symbols[index] = symbol as u16;
            symbol += 1;
        }

        Self {
            limit,
            first_code,
            offset,
            symbols,
            min_len,
        }
    }
}

static HUFFMAN: HuffmanTable = HuffmanTable::build();

/// The HPACK Huffman code (RFC 7541, Appendix B): `(code, length in bits)` of each symbol,
/// indexed by symbol; symbol 256 is EOS.
#[rustfmt::skip]
const HUFFMAN_CODES: [(u32, u8); SYMBOLS] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), // 0..=3
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28), // 4..=7
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28), // 8..=11
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28), // 12..=15
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28), // 16..=19
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28), // 20..=23
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), // 24..=27
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28), // 28..=31
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12), // 32..=35
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), // 36..=39
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11), // 40..=43
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6), // 44..=47
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), // 48..=51
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6), // 52..=55
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8), // 56..=59
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), // 60..=63
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7), // 64..=67
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7), // 68..=71
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), // 72..=75
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7), // 76..=79
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7), // 80..=83
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), // 84..=87
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13), // 88..=91
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6), // 92..=95
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), // 96..=99
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6), // 100..=103
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7), // 104..=107
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), // 108..=111
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5), // 112..=115
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7), // 116..=119
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), // 120..=123
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28), // 124..=127
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20), // 128..=131
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23), // 132..=135
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23), // 136..=139
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23), // 140..=143
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), // 144..=147
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23), // 148..=151
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23), // 152..=155
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24), // 156..=159
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22), // 160..=163
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21), // 164..=167
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24), // 168..=171
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23), // 172..=175
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21), // 176..=179
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23), // 180..=183
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22), // 184..=187
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23), // 188..=191
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), // 192..=195
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25), // 196..=199
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27), // 200..=203
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), // 204..=207
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27), // 208..=211
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24), // 212..=215
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), // 216..=219
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27), // 220..=223
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21), // 224..=227
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23), // 228..=231
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25), // 232..=235
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23), // 236..=239
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), // 240..=243
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27), // 244..=247
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27), // 248..=251
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26), // 252..=255
    (0x3fffffff, 30), // 256: EOS
];

// === Tables ===

/// The static table (RFC 7541, Appendix A): index 1 is the first entry.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The dynamic table (section 2.3.2): newest entry first, bounded by a size in bytes counted
/// as name + value + 32 per entry (section 4.1).
#[derive(Debug)]
struct DynamicTable {
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
}

/// A dynamic table entry: name and value in one allocation.
#[derive(Debug)]
struct Entry {
    field: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn new(name: &[u8], value: &[u8]) -> Self {
        let mut field = Vec::with_capacity(name.len() + value.len());
        field.extend_from_slice(name);
        field.extend_from_slice(value);
        Self {
            field: field.into_boxed_slice(),
            name_len: name.len(),
        }
    }

    fn name(&self) -> &[u8] {
        &self.field[..self.name_len]
    }

    fn value(&self) -> &[u8] {
        &self.field[self.name_len..]
    }

    fn size(&self) -> usize {
        self.field.len() + ENTRY_OVERHEAD
    }
}

impl DynamicTable {
    fn new(max_size: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    /// The field at `index` in the static table followed by this one (section 2.3.3).
    fn field(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if index == 0 {
            return Err(HpackError::ZeroIndex);
        }
        if let Some(&(name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok((name, value));
        }
        self.entries
            .get(index - 1 - STATIC_TABLE.len())
            .map(|entry| (entry.name(), entry.value()))
            .ok_or(HpackError::IndexOutOfRange {
                index,
                entries: STATIC_TABLE.len() + self.entries.len(),
            })
    }

    /// Adds an entry, evicting the oldest ones to make room (section 4.4); an entry larger than
    /// the table empties it and is not added.
    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max_size {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.size += size;
        self.entries.push_front(entry);
    }

    /// Changes the maximum size, evicting entries that no longer fit (section 4.3).
    fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            // A non-zero size means some entry is left.
            let Some(oldest) = self.entries.pop_back() else {
                break;
            };
            self.size -= oldest.size();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Field = (Vec<u8>, Vec<u8>);
    type HeaderList = Vec<Field>;

    const LIMIT: usize = 64 * 1024;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<HeaderList, HpackError> {
        decode_limited(decoder, block, LIMIT)
    }

    fn decode_limited(
        decoder: &mut Decoder,
        block: &[u8],
        limit: usize,
    ) -> Result<HeaderList, HpackError> {
        let mut list = Vec::new();
        decoder.decode(block, limit, |name, value| {
            list.push((name.to_vec(), value.to_vec()));
        })?;
        Ok(list)
    }

    /// The dynamic table's entries, newest first, and its size.
    fn dynamic_table(decoder: &Decoder) -> (HeaderList, usize) {
        let entries = decoder
            .table
            .entries
            .iter()
            .map(|entry| (entry.name().to_vec(), entry.value().to_vec()))
            .collect();
        (entries, decoder.table.size)
    }

    fn owned(fields: &[(&str, &str)]) -> HeaderList {
        fields
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    // === Appendix C ===

    /// One header block of an Appendix C example: its bytes, the list it decodes to, and the
    /// dynamic table after it (newest first) with its size.
    struct Step {
        block: &'static str,
        headers: &'static [(&'static str, &'static str)],
        table: &'static [(&'static str, &'static str)],
        size: usize,
    }

    fn check_steps(table_size: usize, steps: &[Step]) {
        let mut decoder = Decoder::new(table_size);
        for (i, step) in steps.iter().enumerate() {
            let list = decode(&mut decoder, &hex(step.block)).unwrap();
            assert_eq!(list, owned(step.headers), "headers after block {}", i + 1);
            let (entries, size) = dynamic_table(&decoder);
            assert_eq!(entries, owned(step.table), "table after block {}", i + 1);
            assert_eq!(size, step.size, "table size after block {}", i + 1);
        }
    }

    #[test]
    fn c2_single_representations_decode() {
        check_steps(
            4096,
            &[Step {
                block: "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
                headers: &[("custom-key", "custom-header")],
                table: &[("custom-key", "custom-header")],
                size: 55,
            }],
        );
        check_steps(
            4096,
            &[Step {
                block: "040c 2f73 616d 706c 652f 7061 7468",
                headers: &[(":path", "/sample/path")],
                table: &[],
                size: 0,
            }],
        );
        check_steps(
            4096,
            &[Step {
                block: "1008 7061 7373 776f 7264 0673 6563 7265 74",
                headers: &[("password", "secret")],
                table: &[],
                size: 0,
            }],
        );
        check_steps(
            4096,
            &[Step {
                block: "82",
                headers: &[(":method", "GET")],
                table: &[],
                size: 0,
            }],
        );
    }

    const REQUEST_1: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    const REQUEST_2: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ];
    const REQUEST_3: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];
    const REQUEST_TABLE_1: &[(&str, &str)] = &[(":authority", "www.example.com")];
    const REQUEST_TABLE_2: &[(&str, &str)] = &[
        ("cache-control", "no-cache"),
        (":authority", "www.example.com"),
    ];
    const REQUEST_TABLE_3: &[(&str, &str)] = &[
        ("custom-key", "custom-value"),
        ("cache-control", "no-cache"),
        (":authority", "www.example.com"),
    ];

    #[test]
    fn c3_requests_without_huffman_decode() {
        check_steps(
            4096,
            &[
                Step {
                    block: "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                    headers: REQUEST_1,
                    table: REQUEST_TABLE_1,
                    size: 57,
                },
                Step {
                    block: "8286 84be 5808 6e6f 2d63 6163 6865",
                    headers: REQUEST_2,
                    table: REQUEST_TABLE_2,
                    size: 110,
                },
                Step {
                    block: "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 \
                            0c63 7573 746f 6d2d 7661 6c75 65",
                    headers: REQUEST_3,
                    table: REQUEST_TABLE_3,
                    size: 164,
                },
            ],
        );
    }

    #[test]
    fn c4_requests_with_huffman_decode() {
        check_steps(
            4096,
            &[
                Step {
                    block: "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                    headers: REQUEST_1,
                    table: REQUEST_TABLE_1,
                    size: 57,
                },
                Step {
                    block: "8286 84be 5886 a8eb 1064 9cbf",
                    headers: REQUEST_2,
                    table: REQUEST_TABLE_2,
                    size: 110,
                },
                Step {
                    block: "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
                    headers: REQUEST_3,
                    table: REQUEST_TABLE_3,
                    size: 164,
                },
            ],
        );
    }

    const DATE_21: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
    const DATE_22: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
    const LOCATION: &str = "https://www.example.com";
    const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    const RESPONSE_1: &[(&str, &str)] = &[
        (":status", "302"),
        ("cache-control", "private"),
        ("date", DATE_21),
        ("location", LOCATION),
    ];
    const RESPONSE_2: &[(&str, &str)] = &[
        (":status", "307"),
        ("cache-control", "private"),
        ("date", DATE_21),
        ("location", LOCATION),
    ];
    const RESPONSE_3: &[(&str, &str)] = &[
        (":status", "200"),
        ("cache-control", "private"),
        ("date", DATE_22),
        ("location", LOCATION),
        ("content-encoding", "gzip"),
        ("set-cookie", COOKIE),
    ];
    const RESPONSE_TABLE_1: &[(&str, &str)] = &[
        ("location", LOCATION),
        ("date", DATE_21),
        ("cache-control", "private"),
        (":status", "302"),
    ];
    const RESPONSE_TABLE_2: &[(&str, &str)] = &[
        (":status", "307"),
        ("location", LOCATION),
        ("date", DATE_21),
        ("cache-control", "private"),
    ];
    const RESPONSE_TABLE_3: &[(&str, &str)] = &[
        ("set-cookie", COOKIE),
        ("content-encoding", "gzip"),
        ("date", DATE_22),
    ];

    #[test]
    fn c5_responses_without_huffman_decode_with_evictions() {
        check_steps(
            256,
            &[
                Step {
                    block: "4803 3330 3258 0770 7269 7661 7465 611d \
                            4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
                            2032 303a 3133 3a32 3120 474d 546e 1768 \
                            7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
                            6c65 2e63 6f6d",
                    headers: RESPONSE_1,
                    table: RESPONSE_TABLE_1,
                    size: 222,
                },
                Step {
                    block: "4803 3330 37c1 c0bf",
                    headers: RESPONSE_2,
                    table: RESPONSE_TABLE_2,
                    size: 222,
                },
                Step {
                    block: "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 \
                            3230 3133 2032 303a 3133 3a32 3220 474d \
                            54c0 5a04 677a 6970 7738 666f 6f3d 4153 \
                            444a 4b48 514b 425a 584f 5157 454f 5049 \
                            5541 5851 5745 4f49 553b 206d 6178 2d61 \
                            6765 3d33 3630 303b 2076 6572 7369 6f6e \
                            3d31",
                    headers: RESPONSE_3,
                    table: RESPONSE_TABLE_3,
                    size: 215,
                },
            ],
        );
    }

    #[test]
    fn c6_responses_with_huffman_decode_with_evictions() {
        check_steps(
            256,
            &[
                Step {
                    block: "4882 6402 5885 aec3 771a 4b61 96d0 7abe \
                            9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
                            2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 \
                            e9ae 82ae 43d3",
                    headers: RESPONSE_1,
                    table: RESPONSE_TABLE_1,
                    size: 222,
                },
                Step {
                    block: "4883 640e ffc1 c0bf",
                    headers: RESPONSE_2,
                    table: RESPONSE_TABLE_2,
                    size: 222,
                },
                Step {
                    block: "88c1 6196 d07a be94 1054 d444 a820 0595 \
                            040b 8166 e084 a62d 1bff c05a 839b d9ab \
                            77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b \
                            3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
                            9587 3160 65c0 03ed 4ee5 b106 3d50 07",
                    headers: RESPONSE_3,
                    table: RESPONSE_TABLE_3,
                    size: 215,
                },
            ],
        );
    }

    // === Tables ===

    #[test]
    fn static_table_matches_an_independent_decoder() {
        let mut ours = Decoder::new(4096);
        let mut theirs = loona_hpack::Decoder::new();
        for index in 1..=61u8 {
            let block = [0x80 | index];
            assert_eq!(
                decode(&mut ours, &block).unwrap(),
                theirs.decode(&block).unwrap(),
                "static entry {index}"
            );
        }
    }

    #[test]
    fn huffman_codes_match_appendix_b_samples() {
        assert_eq!(HUFFMAN_CODES[usize::from(b' ')], (0x14, 6));
        assert_eq!(HUFFMAN_CODES[usize::from(b'0')], (0x0, 5));
        assert_eq!(HUFFMAN_CODES[usize::from(b'a')], (0x3, 5));
        assert_eq!(HUFFMAN_CODES[usize::from(b'~')], (0x1ffd, 13));
        assert_eq!(HUFFMAN_CODES[0], (0x1ff8, 13));
        assert_eq!(HUFFMAN_CODES[255], (0x3ffffee, 26));
        assert_eq!(HUFFMAN_CODES[usize::from(EOS)], (0x3fff_ffff, 30));
        assert_eq!(HUFFMAN.min_len, 5);
    }

    #[test]
    fn entry_larger_than_the_table_empties_it() {
        let mut decoder = Decoder::new(100);
        decode(&mut decoder, &literal(0x40, b"a", b"b", false)).unwrap();
        assert_eq!(dynamic_table(&decoder).1, 34);
        let list = decode(&mut decoder, &literal(0x40, b"big", &[b'x'; 80], false)).unwrap();
        assert_eq!(list, vec![(b"big".to_vec(), vec![b'x'; 80])]);
        assert_eq!(dynamic_table(&decoder), (vec![], 0));
    }

    #[test]
    fn literals_without_indexing_and_never_indexed_leave_the_table_alone() {
        let mut decoder = Decoder::new(4096);
        let mut block = literal(0x00, b"x-a", b"1", true);
        block.extend(literal(0x10, b"x-b", b"2", false));
        // Indexed name (static 58, user-agent), never indexed.
        block.push(0x1f);
        block.push(58 - 15);
        block.extend(string(b"agent", true));
        let list = decode(&mut decoder, &block).unwrap();
        assert_eq!(
            list,
            owned(&[("x-a", "1"), ("x-b", "2"), ("user-agent", "agent")])
        );
        assert_eq!(dynamic_table(&decoder), (vec![], 0));
    }

    #[test]
    fn size_updates_at_the_start_resize_and_evict() {
        let mut decoder = Decoder::new(4096);
        decode(&mut decoder, &literal(0x40, b"x-a", b"1", false)).unwrap();
        decode(&mut decoder, &literal(0x40, b"x-b", b"2", false)).unwrap();
        assert_eq!(dynamic_table(&decoder).0.len(), 2);

        // Two updates (section 4.2): down to 36 bytes, which keeps only x-b, then back up.
        let mut block = integer(36, 5, 0x20);
        block.extend(integer(4096, 5, 0x20));
        block.push(0xbe);
        let list = decode(&mut decoder, &block).unwrap();
        assert_eq!(list, owned(&[("x-b", "2")]));
        assert_eq!(dynamic_table(&decoder), (owned(&[("x-b", "2")]), 36));

        // To zero: every entry goes, and references to it fail.
        assert_eq!(decode(&mut decoder, &[0x20]).unwrap(), vec![]);
        assert_eq!(dynamic_table(&decoder), (vec![], 0));
        assert_eq!(
            decode(&mut decoder, &[0xbe]),
            Err(HpackError::IndexOutOfRange {
                index: 62,
                entries: 61
            })
        );
        // A table of size 0 stores nothing.
        decode(&mut decoder, &literal(0x40, b"x-c", b"3", false)).unwrap();
        assert_eq!(dynamic_table(&decoder), (vec![], 0));
    }

    // === Errors ===

    #[test]
    fn padding_that_is_not_all_ones_is_an_error() {
        // '0' is 00000; three zero bits of padding follow.
        let block = [0x00, 0x01, b'a', 0x81, 0x00];
        assert_eq!(
            decode(&mut Decoder::new(4096), &block),
            Err(HpackError::HuffmanPaddingNotEos {
                padding: 0,
                bits: 3
            })
        );
        // Three bits of padding 101.
        let block = [0x00, 0x01, b'a', 0x81, 0x05];
        assert_eq!(
            decode(&mut Decoder::new(4096), &block),
            Err(HpackError::HuffmanPaddingNotEos {
                padding: 0b101,
                bits: 3
            })
        );
    }

    #[test]
    fn padding_longer_than_seven_bits_is_an_error() {
        // '0' then 11 one bits.
        let block = [0x00, 0x01, b'a', 0x82, 0x07, 0xff];
        assert_eq!(
            decode(&mut Decoder::new(4096), &block),
            Err(HpackError::HuffmanPaddingTooLong { bits: 11 })
        );
        // A whole byte of ones as the only content.
        let block = [0x00, 0x01, b'a', 0x81, 0xff];
        assert_eq!(
            decode(&mut Decoder::new(4096), &block),
            Err(HpackError::HuffmanPaddingTooLong { bits: 8 })
        );
    }

    #[test]
    fn eos_inside_a_string_is_an_error() {
        // 30 one bits (EOS) then two more as padding.
        let block = [0x00, 0x01, b'a', 0x84, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode(&mut Decoder::new(4096), &block),
            Err(HpackError::HuffmanEos)
        );
        // 'a' (00011), EOS, then 'a' again and padding: EOS in the middle.
        let mut bits = BitWriter::default();
        bits.push(0x3, 5);
        bits.push(0x3fff_ffff, 30);
        bits.push(0x3, 5);
        let coded = bits.finish();
        let mut block = vec![0x00, 0x01, b'a'];
        block.extend(integer(coded.len(), 7, 0x80));
        block.extend(coded);
        assert_eq!(
            decode(&mut Decoder::new(4096), &block),
            Err(HpackError::HuffmanEos)
        );
    }

    #[test]
    fn index_zero_is_an_error() {
        assert_eq!(
            decode(&mut Decoder::new(4096), &[0x80]),
            Err(HpackError::ZeroIndex)
        );
    }

    #[test]
    fn index_beyond_the_tables_is_an_error() {
        let mut decoder = Decoder::new(4096);
        decode(&mut decoder, &literal(0x40, b"x-a", b"1", false)).unwrap();
        assert_eq!(
            decode(&mut decoder, &[0xbe]).unwrap(),
            owned(&[("x-a", "1")])
        );
        assert_eq!(
            decode(&mut decoder, &[0xbf]),
            Err(HpackError::IndexOutOfRange {
                index: 63,
                entries: 62
            })
        );
        // As the name of a literal, too.
        let mut block = integer(70, 6, 0x40);
        block.extend(string(b"v", false));
        assert_eq!(
            decode(&mut decoder, &block),
            Err(HpackError::IndexOutOfRange {
                index: 70,
                entries: 62
            })
        );
    }

    #[test]
    fn size_update_above_the_limit_is_an_error() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(decode(&mut decoder, &integer(4096, 5, 0x20)), Ok(vec![]));
        assert_eq!(
            decode(&mut decoder, &integer(4097, 5, 0x20)),
            Err(HpackError::TableSizeAboveLimit {
                size: 4097,
                limit: 4096
            })
        );
    }

    #[test]
    fn size_update_after_a_field_is_an_error() {
        assert_eq!(
            decode(&mut Decoder::new(4096), &[0x82, 0x20]),
            Err(HpackError::LateTableSizeUpdate { size: 0 })
        );
    }

    #[test]
    fn integer_overflow_is_an_error() {
        // 127 + (2^28 - 1) + 15 * 2^28 = 2^32 + 126.
        let block = [0xff, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(
            decode(&mut Decoder::new(4096), &block),
            Err(HpackError::IntegerOverflow)
        );
        // Six continuation bytes, even of zeros.
        let block = [0xff, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(
            decode(&mut Decoder::new(4096), &block),
            Err(HpackError::IntegerOverflow)
        );
        // The largest value accepted is u32::MAX, and then it is an index out of range.
        let block = integer(u32::MAX as usize, 7, 0x80);
        assert!(matches!(
            decode(&mut Decoder::new(4096), &block),
            Err(HpackError::IndexOutOfRange { .. })
        ));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decode(&mut decoder, &[0xff]),
            Err(HpackError::TruncatedInteger)
        );
        assert_eq!(
            decode(&mut decoder, &[0xff, 0x80]),
            Err(HpackError::TruncatedInteger)
        );
        assert_eq!(
            decode(&mut decoder, &[0x40]),
            Err(HpackError::TruncatedInteger)
        );
        assert_eq!(
            decode(&mut decoder, &[0x00, 0x05, b'a']),
            Err(HpackError::TruncatedString {
                len: 5,
                available: 1
            })
        );
        assert_eq!(
            decode(&mut decoder, &[0x00, 0x01, b'a']),
            Err(HpackError::TruncatedInteger)
        );
    }

    #[test]
    fn messages_name_what_was_wrong() {
        assert_eq!(
            HpackError::IndexOutOfRange {
                index: 70,
                entries: 62
            }
            .to_string(),
            "table index 70 is beyond the 62 entries of the static and dynamic tables"
        );
        assert_eq!(
            HpackError::TableSizeAboveLimit {
                size: 4097,
                limit: 4096
            }
            .to_string(),
            "dynamic table size update to 4097 bytes exceeds the limit of 4096 bytes"
        );
        assert_eq!(
            HpackError::IntegerOverflow.to_string(),
            "integer in the header block exceeds 4294967295"
        );
    }

    // === Bounds ===

    #[test]
    fn references_past_the_list_limit_are_refused() {
        let mut block = literal(0x40, b"x-bomb", &[b'b'; 3000], false);
        block.extend(std::iter::repeat_n(0xbe, 100));
        let mut decoder = Decoder::new(4096);
        let mut fields = 0;
        let result = decoder.decode(&block, LIMIT, |_, _| fields += 1);
        assert_eq!(result, Err(HpackError::DecodedTooLarge { limit: LIMIT }));
        // 3038 bytes per field: 21 fit in 64 KiB.
        assert_eq!(fields, 21);
    }

    #[test]
    fn long_strings_are_refused_before_they_are_decoded() {
        // 4000 '0' symbols Huffman-coded in 2500 bytes, against a 1000-byte limit.
        let value = vec![b'0'; 4000];
        let block = literal(0x00, b"x", &value, true);
        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decode_limited(&mut decoder, &block, 1000),
            Err(HpackError::DecodedTooLarge { limit: 1000 })
        );
        assert!(decoder.value_buf.capacity() <= 1000);

        // Raw, a name longer than the limit is refused before the value is looked at.
        let block = literal(0x00, &[b'n'; 2000], b"v", false);
        assert_eq!(
            decode_limited(&mut decoder, &block, 1000),
            Err(HpackError::DecodedTooLarge { limit: 1000 })
        );

        // Exactly at the limit is accepted: 32 + 1 + 967.
        let block = literal(0x00, b"x", &[b'0'; 967], true);
        assert_eq!(decode_limited(&mut decoder, &block, 1000).unwrap().len(), 1);
        let block = literal(0x00, b"x", &[b'0'; 968], true);
        assert!(decode_limited(&mut decoder, &block, 1000).is_err());
    }

    // === Encoding helpers (tests only) ===

    #[derive(Default)]
    struct BitWriter {
        bytes: Vec<u8>,
        acc: u64,
        bits: u32,
    }

    impl BitWriter {
        fn push(&mut self, code: u32, len: u8) {
            self.acc = self.acc << len | u64::from(code);
            self.bits += u32::from(len);
            while self.bits >= 8 {
                self.bits -= 8;
                self.bytes.push((self.acc >> self.bits) as u8);
            }
        }

        /// Pads with the leading bits of EOS.
        fn finish(mut self) -> Vec<u8> {
            if self.bits > 0 {
                let pad = 8 - self.bits;
                self.push((1 << pad) - 1, pad as u8);
            }
            self.bytes
        }
    }

    fn huffman(data: &[u8]) -> Vec<u8> {
        let mut bits = BitWriter::default();
        for &byte in data {
            let (code, len) = HUFFMAN_CODES[usize::from(byte)];
            bits.push(code, len);
        }
        bits.finish()
    }

    fn integer(mut value: usize, prefix_bits: u8, flags: u8) -> Vec<u8> {
        let max_prefix = (1usize << prefix_bits) - 1;
        if value < max_prefix {
            return vec![flags | value as u8];
        }
        let mut out = vec![flags | max_prefix as u8];
        value -= max_prefix;
        while value >= 128 {
            out.push((value % 128) as u8 | 0x80);
            value /= 128;
        }
        out.push(value as u8);
        out
    }

    fn string(data: &[u8], use_huffman: bool) -> Vec<u8> {
        let (flag, body) = if use_huffman {
            (0x80, huffman(data))
        } else {
            (0x00, data.to_vec())
        };
        let mut out = integer(body.len(), 7, flag);
        out.extend(body);
        out
    }

    /// A literal with a literal name; `first_byte` selects the representation.
    fn literal(first_byte: u8, name: &[u8], value: &[u8], use_huffman: bool) -> Vec<u8> {
        let mut out = vec![first_byte];
        out.extend(string(name, use_huffman));
        out.extend(string(value, use_huffman));
        out
    }

    /// How the test encoder writes one field.
    #[derive(Debug, Clone, Copy)]
    struct Choice {
        /// 0: indexed when the whole field is in a table; 1: incremental indexing; 2: without
        /// indexing; 3: never indexed.
        representation: u8,
        name_index: bool,
        huffman_name: bool,
        huffman_value: bool,
    }

    /// An HPACK encoder that uses every representation, mirroring the dynamic table with a
    /// plain list so that its indices do not come from the code under test.
    struct TestEncoder {
        table: VecDeque<Field>,
        max_size: usize,
    }

    impl TestEncoder {
        fn size(&self) -> usize {
            self.table.iter().map(|(n, v)| n.len() + v.len() + 32).sum()
        }

        fn resize(&mut self, max_size: usize, out: &mut Vec<u8>) {
            out.extend(integer(max_size, 5, 0x20));
            self.max_size = max_size;
            while self.size() > max_size {
                self.table.pop_back();
            }
        }

        fn find(&self, name: &[u8], value: Option<&[u8]>) -> Option<usize> {
            let statics = STATIC_TABLE.iter().map(|&(n, v)| (n, v));
            let dynamic = self.table.iter().map(|(n, v)| (&n[..], &v[..]));
            statics
                .chain(dynamic)
                .position(|(n, v)| n == name && value.is_none_or(|value| v == value))
                .map(|i| i + 1)
        }

        fn encode(&mut self, fields: &[(Field, Choice)], out: &mut Vec<u8>) {
            for ((name, value), choice) in fields {
                if choice.representation == 0 {
                    if let Some(index) = self.find(name, Some(value)) {
                        out.extend(integer(index, 7, 0x80));
                        continue;
                    }
                }
                let (prefix, flags) = match choice.representation {
                    0 | 1 => (6, 0x40),
                    2 => (4, 0x00),
                    _ => (4, 0x10),
                };
                match self.find(name, None).filter(|_| choice.name_index) {
                    Some(index) => out.extend(integer(index, prefix, flags)),
                    None => {
                        out.extend(integer(0, prefix, flags));
                        out.extend(string(name, choice.huffman_name));
                    }
                }
                out.extend(string(value, choice.huffman_value));
                if flags == 0x40 {
                    self.table.push_front((name.clone(), value.clone()));
                    while self.size() > self.max_size {
                        self.table.pop_back();
                    }
                }
            }
        }
    }

    fn field() -> impl Strategy<Value = Field> {
        let name = prop_oneof![
            Just(b":authority".to_vec()),
            Just(b":path".to_vec()),
            Just(b"content-type".to_vec()),
            Just(b"user-agent".to_vec()),
            "[a-z0-9-]{1,12}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 1..20),
        ];
        let value = prop_oneof![
            Just(b"POST".to_vec()),
            Just(b"application/grpc".to_vec()),
            "[ -~]{0,40}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..300),
        ];
        (name, value)
    }

    fn choice() -> impl Strategy<Value = Choice> {
        (0u8..4, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(representation, name_index, huffman_name, huffman_value)| Choice {
                representation,
                name_index,
                huffman_name,
                huffman_value,
            },
        )
    }

    proptest! {
        #[test]
        fn blocks_from_an_independent_encoder_decode_to_the_same_lists(
            lists in proptest::collection::vec(proptest::collection::vec(field(), 0..12), 1..6),
        ) {
            let mut encoder = loona_hpack::Encoder::new();
            let mut decoder = Decoder::new(4096);
            for list in &lists {
                let block = encoder.encode(list.iter().map(|(n, v)| (&n[..], &v[..])));
                prop_assert_eq!(&decode(&mut decoder, &block).unwrap(), list);
            }
        }

        #[test]
        fn every_representation_decodes_like_an_independent_decoder(
            blocks in proptest::collection::vec(
                (proptest::option::of(0usize..=4096), proptest::collection::vec((field(), choice()), 1..12)),
                1..6,
            ),
        ) {
            let mut encoder = TestEncoder { table: VecDeque::new(), max_size: 4096 };
            let mut ours = Decoder::new(4096);
            let mut theirs = loona_hpack::Decoder::new();
            for (resize, fields) in &blocks {
                let mut block = Vec::new();
                if let Some(size) = resize {
                    encoder.resize(*size, &mut block);
                }
                encoder.encode(fields, &mut block);
                let expected: HeaderList = fields.iter().map(|(f, _)| f.clone()).collect();

                prop_assert_eq!(&theirs.decode(&block).unwrap(), &expected);
                prop_assert_eq!(&decode(&mut ours, &block).unwrap(), &expected);
                let (entries, size) = dynamic_table(&ours);
                prop_assert_eq!(entries, Vec::from(encoder.table.clone()));
                prop_assert_eq!(size, encoder.size());
            }
        }

        #[test]
        fn any_bytes_survive_huffman_coding(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let block = literal(0x00, b"x", &data, true);
            let list = decode(&mut Decoder::new(4096), &block).unwrap();
            prop_assert_eq!(&list[0].1, &data);
        }

        #[test]
        fn arbitrary_blocks_never_panic(block in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut decoder = Decoder::new(4096);
            let _ = decode_limited(&mut decoder, &block, 4096);
            let _ = decode(&mut decoder, &block);
        }
    }
}
