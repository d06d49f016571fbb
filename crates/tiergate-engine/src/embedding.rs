//! Token embedding rows read from the weights file, for a graph that takes `inputs_embeds`
//! (a manifest [`EmbeddingTable`]).
//!
//! Each row is read with positioned reads (`pread`) into a small buffer: the table stays in the
//! kernel's page cache, shared and reclaimable, instead of in the process's resident memory as
//! it was when the graph looked rows up itself (ONNX Runtime then kept the whole table mapped).
//! The values are the table's float32 values or, for a Q8_0 table, `q * d` in float32: bit for
//! bit what that lookup computed.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::EngineError;
use crate::manifest::EmbeddingTable;

/// Values per Q8_0 block (one scale each).
const BLOCK: usize = 32;

/// A manifest table and the model directory its file is in: what a session opens once it knows
/// the graph's embedding width.
#[derive(Debug, Clone)]
pub(crate) struct EmbeddingSource {
    pub(crate) dir: PathBuf,
    pub(crate) table: EmbeddingTable,
}

impl EmbeddingSource {
    pub(crate) fn open(&self, hidden: usize, vocab: usize) -> Result<TokenRows, EngineError> {
        TokenRows::open(&self.dir, &self.table, hidden, vocab)
    }
}

/// An open embedding table: `vocab` rows of `hidden` float32 values.
#[derive(Debug)]
pub(crate) struct TokenRows {
    file: File,
    path: PathBuf,
    /// The manifest's entry: where each part of the table is in the file.
    table: EmbeddingTable,
    hidden: usize,
    vocab: usize,
}

impl TokenRows {
    /// Opens the table in `dir` and checks that every part of it lies inside its file.
    pub(crate) fn open(
        dir: &Path,
        table: &EmbeddingTable,
        hidden: usize,
        vocab: usize,
    ) -> Result<TokenRows, EngineError> {
        let path = dir.join(table.weights());
        let invalid = |reason: String| EngineError::ManifestInvalid {
            path: dir.join(crate::manifest::MANIFEST_FILE),
            reason,
        };
        let whole_blocks =
            matches!(table, EmbeddingTable::F32 { .. }) || hidden.is_multiple_of(BLOCK);
        if hidden == 0 || !whole_blocks {
            return Err(invalid(format!(
                "the graph's embedding width {hidden} does not fit the table (a Q8_0 table needs a \
                 positive multiple of {BLOCK})"
            )));
        }
        let file = File::open(&path).map_err(|e| EngineError::ModelFileMissing {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let file_bytes = file
            .metadata()
            .map_err(|e| EngineError::ModelFileMissing {
                path: path.clone(),
                reason: e.to_string(),
            })?
            .len();
        let rows = Self {
            file,
            path,
            table: table.clone(),
            hidden,
            vocab,
        };
        for (part, offset, row_bytes) in rows.parts() {
            let end = (vocab as u64)
                .checked_mul(row_bytes as u64)
                .and_then(|bytes| bytes.checked_add(offset));
            if end.is_none_or(|end| end > file_bytes) {
                return Err(invalid(format!(
                    "the embedding table's `{part}` ({vocab} rows of {row_bytes} bytes from byte \
                     {offset}) does not fit in `{}` ({file_bytes} bytes)",
                    table.weights()
                )));
            }
        }
        Ok(rows)
    }

    /// Each part of the table: its name, offset and bytes per row.
    fn parts(&self) -> Vec<(&'static str, u64, usize)> {
        let scale_bytes = self.hidden / BLOCK * 4;
        match self.table {
            EmbeddingTable::F32 { table, .. } => vec![("table", table, self.hidden * 4)],
            EmbeddingTable::NibblePlanes {
                high, low, scales, ..
            } => vec![
                ("high", high, self.hidden / 2),
                ("low", low, self.hidden / 2),
                ("scales", scales, scale_bytes),
            ],
            EmbeddingTable::Offset128 { codes, scales, .. } => {
                vec![
                    ("codes", codes, self.hidden),
                    ("scales", scales, scale_bytes),
                ]
            }
        }
    }

    /// Values per row: the graph's `inputs_embeds` width.
    pub(crate) fn hidden(&self) -> usize {
        self.hidden
    }

    /// Appends the rows of `ids` to `out` (`ids.len() * hidden` values).
    pub(crate) fn append(&self, ids: &[u32], out: &mut Vec<f32>) -> Result<(), EngineError> {
        let hidden = self.hidden;
        // Room for the widest part of a row: a float32 row, or a Q8_0 row's codes.
        let mut bytes = vec![0u8; hidden * 4];
        let mut scale_bytes = vec![0u8; hidden / BLOCK * 4];
        let mut scales = vec![0f32; hidden / BLOCK];
        out.reserve(ids.len() * hidden);
        for &id in ids {
            let row = id as usize;
            if row >= self.vocab {
                return Err(EngineError::Runtime(format!(
                    "token id {id} is outside the embedding table's {} rows",
                    self.vocab
                )));
            }
            let at = |offset: u64, row_bytes: usize| offset + (row * row_bytes) as u64;
            match self.table {
                EmbeddingTable::F32 { table, .. } => {
                    let values = &mut bytes[..hidden * 4];
                    self.read(values, at(table, hidden * 4))?;
                    out.extend(values.chunks_exact(4).map(le_f32));
                }
                EmbeddingTable::NibblePlanes {
                    high,
                    low,
                    scales: scales_at,
                    ..
                } => {
                    let (high_row, rest) = bytes.split_at_mut(hidden / 2);
                    let low_row = &mut rest[..hidden / 2];
                    self.read(high_row, at(high, hidden / 2))?;
                    self.read(low_row, at(low, hidden / 2))?;
                    self.read_scales(
                        at(scales_at, scale_bytes.len()),
                        &mut scale_bytes,
                        &mut scales,
                    )?;
                    let nibble = |plane: &[u8], column: usize| {
                        let byte = plane[column / 2];
                        i32::from(if column.is_multiple_of(2) {
                            byte & 15
                        } else {
                            byte >> 4
                        })
                    };
                    out.extend((0..hidden).map(|column| {
                        let q = 16 * (nibble(high_row, column) - 8) + nibble(low_row, column);
                        q as f32 * scales[column / BLOCK]
                    }));
                }
                EmbeddingTable::Offset128 {
                    codes,
                    scales: scales_at,
                    ..
                } => {
                    let row_codes = &mut bytes[..hidden];
                    self.read(row_codes, at(codes, hidden))?;
                    self.read_scales(
                        at(scales_at, scale_bytes.len()),
                        &mut scale_bytes,
                        &mut scales,
                    )?;
                    out.extend(row_codes.iter().enumerate().map(|(column, &code)| {
                        (i32::from(code) - 128) as f32 * scales[column / BLOCK]
                    }));
                }
            }
        }
        Ok(())
    }

    /// One row's Q8_0 block scales: `raw.len() / 4` float32 values from `offset`.
    fn read_scales(
        &self,
        offset: u64,
        raw: &mut [u8],
        scales: &mut [f32],
    ) -> Result<(), EngineError> {
        self.read(raw, offset)?;
        for (scale, value) in scales.iter_mut().zip(raw.chunks_exact(4)) {
            *scale = le_f32(value);
        }
        Ok(())
    }

    fn read(&self, buffer: &mut [u8], offset: u64) -> Result<(), EngineError> {
        read_exact_at(&self.file, buffer, offset).map_err(|e| {
            EngineError::Runtime(format!(
                "reading embedding rows from {}: {e}",
                self.path.display()
            ))
        })
    }
}

/// A little-endian float32 from exactly four bytes.
fn le_f32(bytes: &[u8]) -> f32 {
    f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[cfg(unix)]
fn read_exact_at(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buffer, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buffer: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buffer.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buffer, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            read => {
                buffer = &mut buffer[read..];
                offset += read as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Encoding {
        F32,
        NibblePlanes,
        Offset128,
    }

    const ENCODINGS: [Encoding; 3] = [Encoding::F32, Encoding::NibblePlanes, Encoding::Offset128];

    /// Every int8 value, across two rows of 64 and a third of extremes, and a scale per block.
    fn sample() -> (Vec<Vec<i8>>, Vec<Vec<f32>>) {
        let rows: Vec<Vec<i8>> = vec![
            (-128..-64).map(|q| q as i8).collect(),
            (64..128).map(|q| q as i8).collect(),
            (0..64)
                .map(|i| [-128i8, 127, -1, 0, 1, -8, 7, 16][i % 8])
                .collect(),
        ];
        let scales = vec![vec![0.5, -0.25], vec![1e-3, 3.0], vec![0.007_812_5, 1.0]];
        (rows, scales)
    }

    /// Row `r`'s values: `q * d`, what every encoding must give back.
    fn values(rows: &[Vec<i8>], scales: &[Vec<f32>], r: usize) -> Vec<f32> {
        rows[r]
            .iter()
            .enumerate()
            .map(|(c, &q)| f32::from(q) * scales[r][c / BLOCK])
            .collect()
    }

    /// The sample's table written in `encoding` behind `padding` bytes of other data, in a
    /// temporary directory, and its manifest entry.
    fn table_file(encoding: Encoding, padding: usize) -> (tempfile::TempDir, EmbeddingTable) {
        let (rows, scales) = sample();
        let mut data = vec![0xAAu8; padding];
        let start = data.len() as u64;
        let plane = |part: fn(i16) -> u8| -> Vec<u8> {
            rows.iter()
                .flat_map(|row| {
                    row.chunks_exact(2)
                        .map(move |pair| part(i16::from(pair[0])) | (part(i16::from(pair[1])) << 4))
                })
                .collect()
        };
        let plane_bytes = (rows.len() * rows[0].len() / 2) as u64;
        match encoding {
            Encoding::F32 => {
                for r in 0..rows.len() {
                    data.extend(
                        values(&rows, &scales, r)
                            .iter()
                            .flat_map(|v| v.to_le_bytes()),
                    );
                }
            }
            Encoding::NibblePlanes => {
                data.extend(plane(|q| ((q >> 4) + 8) as u8));
                data.extend(plane(|q| (q & 15) as u8));
            }
            Encoding::Offset128 => {
                data.extend(rows.iter().flatten().map(|&q| (i16::from(q) + 128) as u8));
            }
        }
        let scales_start = data.len() as u64;
        data.extend(scales.iter().flatten().flat_map(|d| d.to_le_bytes()));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.data"), &data).unwrap();
        let weights = "w.data".to_string();
        let table = match encoding {
            Encoding::F32 => EmbeddingTable::F32 {
                weights,
                table: start,
            },
            Encoding::NibblePlanes => EmbeddingTable::NibblePlanes {
                weights,
                high: start,
                low: start + plane_bytes,
                scales: scales_start,
            },
            Encoding::Offset128 => EmbeddingTable::Offset128 {
                weights,
                codes: start,
                scales: scales_start,
            },
        };
        (dir, table)
    }

    #[test]
    fn every_encoding_gives_q_times_d_for_every_int8_value() {
        let (rows, scales) = sample();
        for encoding in ENCODINGS {
            let (dir, table) = table_file(encoding, 100);
            let table_rows = TokenRows::open(dir.path(), &table, 64, rows.len()).unwrap();
            let mut out = Vec::new();
            table_rows.append(&[2, 0, 1, 0], &mut out).unwrap();
            let expected: Vec<f32> = [2, 0, 1, 0]
                .iter()
                .flat_map(|&r| values(&rows, &scales, r))
                .collect();
            assert_eq!(out, expected, "{encoding:?}");
        }
    }

    #[test]
    fn an_id_beyond_the_table_is_an_error_and_appends_nothing_for_it() {
        for encoding in ENCODINGS {
            let (dir, table) = table_file(encoding, 0);
            let table_rows = TokenRows::open(dir.path(), &table, 64, 3).unwrap();
            let mut out = Vec::new();
            let error = table_rows.append(&[3], &mut out).unwrap_err();
            assert!(error.to_string().contains("token id 3"), "{error}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn a_table_that_does_not_fit_in_its_file_is_refused_at_open() {
        for encoding in ENCODINGS {
            let (dir, table) = table_file(encoding, 0);
            // One row more than the file holds.
            let error = TokenRows::open(dir.path(), &table, 64, 4).unwrap_err();
            assert!(
                error.to_string().contains("does not fit"),
                "{encoding:?}: {error}"
            );
        }
        // A Q8_0 table needs whole blocks of 32 values.
        let (dir, table) = table_file(Encoding::Offset128, 0);
        let error = TokenRows::open(dir.path(), &table, 48, 3).unwrap_err();
        assert!(error.to_string().contains("multiple of 32"), "{error}");
        let missing = EmbeddingTable::Offset128 {
            weights: "absent.data".into(),
            codes: 0,
            scales: 0,
        };
        assert!(matches!(
            TokenRows::open(dir.path(), &missing, 64, 1),
            Err(EngineError::ModelFileMissing { .. })
        ));
    }

    #[test]
    fn a_file_truncated_after_open_fails_the_read_instead_of_returning_zeros() {
        let (dir, table) = table_file(Encoding::Offset128, 0);
        let table_rows = TokenRows::open(dir.path(), &table, 64, 3).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("w.data"))
            .unwrap()
            .set_len(64)
            .unwrap();
        let error = table_rows.append(&[2], &mut Vec::new()).unwrap_err();
        assert!(
            error.to_string().contains("reading embedding rows"),
            "{error}"
        );
    }
}
