//! Where the emitters get their weights: a checkpoint (memory-mapped, one tensor at a time,
//! missing keys refused) or any candle `VarBuilder` (the parity tests' random weights); and
//! the transposition that stores a checkpoint's [out, in] matrix as the [in, out] operand a
//! MatMul multiplies, streamed block by block.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use unireward_models::checkpoint::{Checkpoint, KeyAudit, KeyLayout};

use crate::dtype::ElementSlice;
use crate::error::{Error, Result};
use crate::graph::PieceSink;

struct Audit {
    audit: KeyAudit,
    dir: PathBuf,
    /// The key layout's name, for the error naming the missing keys.
    layout: String,
}

/// Weights by their checkpoint key. Every fetch loads just that tensor, so an export holds at
/// most one weight (plus one conversion chunk) besides the memory map.
pub struct Weights {
    vb: VarBuilder<'static>,
    audit: Option<Audit>,
}

impl Weights {
    /// Weights of `ckpt`, served as f32 whatever they are stored as (bf16 and f16 widen
    /// exactly, so storing them back as f16 rounds once).
    pub fn from_checkpoint(ckpt: &Checkpoint, layout: &KeyLayout) -> Self {
        Self::from_checkpoint_named(ckpt, layout.name)
    }

    /// [`Self::from_checkpoint`] for a layout known by its name (a Qwen-VL family's).
    pub fn from_checkpoint_named(ckpt: &Checkpoint, layout: &str) -> Self {
        let (vb, audit) = ckpt.var_builder(DType::F32, &Device::Cpu);
        Self {
            vb,
            audit: Some(Audit {
                audit,
                dir: ckpt.dir.clone(),
                layout: layout.to_string(),
            }),
        }
    }

    /// Weights from any source whose names are checkpoint keys.
    pub fn from_var_builder(vb: VarBuilder<'static>) -> Self {
        Self { vb, audit: None }
    }

    /// The tensor stored under `key`, which must have `shape`.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.vb.get(shape, key)?;
        if let Some(a) = &self.audit {
            // The auditing backend hands out zeros for a missing key; refuse before a single
            // zero reaches the data file.
            a.audit.finish_named(&a.dir, &a.layout)?;
        }
        Ok(t)
    }
}

/// Elements per piece handed on by [`transposed_pieces`], at the least; pieces are whole rows
/// of the transpose.
const PIECE_ELEMENTS: usize = 1 << 16;
/// Columns of the source read together: one 64-byte cache line of f32 per source row, so a
/// tall matrix (a 152k-row output head) is not read one strided element at a time.
const MIN_BLOCK_COLUMNS: usize = 16;

/// Hands `src`, a row-major [rows, cols] matrix, to `emit` as its transpose [cols, rows] in
/// row-major order, in pieces of whole rows of the transpose: a weight is stored the way a
/// MatMul multiplies it without a transposed copy of the whole weight in memory.
pub fn transposed_pieces(
    src: ElementSlice<'_>,
    rows: usize,
    cols: usize,
    name: &str,
    emit: &mut PieceSink<'_>,
) -> Result<()> {
    if rows * cols != src.len() {
        return Err(Error::convert(
            name,
            format!("{} elements are not a [{rows}, {cols}] matrix", src.len()),
        ));
    }
    match src {
        ElementSlice::F32(s) => transpose_blocks(s, rows, cols, emit, |b| ElementSlice::F32(b)),
        ElementSlice::F16(s) => transpose_blocks(s, rows, cols, emit, |b| ElementSlice::F16(b)),
        ElementSlice::BF16(s) => transpose_blocks(s, rows, cols, emit, |b| ElementSlice::BF16(b)),
        ElementSlice::F64(s) => transpose_blocks(s, rows, cols, emit, |b| ElementSlice::F64(b)),
        _ => Err(Error::convert(name, "only float matrices are transposed")),
    }
}

fn transpose_blocks<T: Copy + Default>(
    src: &[T],
    rows: usize,
    cols: usize,
    emit: &mut PieceSink<'_>,
    wrap: for<'a> fn(&'a [T]) -> ElementSlice<'a>,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let block = (PIECE_ELEMENTS / rows).max(MIN_BLOCK_COLUMNS).min(cols);
    let mut buf = vec![T::default(); block * rows];
    let mut j0 = 0;
    while j0 < cols {
        let j1 = (j0 + block).min(cols);
        let width = j1 - j0;
        for (i, row) in src.chunks_exact(cols).enumerate() {
            for (dj, &v) in row[j0..j1].iter().enumerate() {
                buf[dj * rows + i] = v;
            }
        }
        emit(wrap(&buf[..width * rows]))?;
        j0 = j1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_the_transpose_in_row_major_order() -> Result<()> {
        // Tall and wide matrices: blocks of 16 columns, a last partial block, one piece.
        for (rows, cols) in [(5000, 37), (3, 4), (1, 70000), (70000, 1)] {
            let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let mut out = Vec::with_capacity(src.len());
            let mut pieces = 0;
            transposed_pieces(ElementSlice::F32(&src), rows, cols, "w", &mut |p| {
                let ElementSlice::F32(p) = p else {
                    panic!("an f32 matrix came back as another type");
                };
                assert_eq!(p.len() % rows, 0, "a piece is whole rows of the transpose");
                out.extend_from_slice(p);
                pieces += 1;
                Ok(())
            })?;
            assert_eq!(out.len(), src.len());
            for j in 0..cols {
                for i in 0..rows {
                    assert_eq!(out[j * rows + i], src[i * cols + j], "[{rows}, {cols}]");
                }
            }
            let block = (PIECE_ELEMENTS / rows).max(MIN_BLOCK_COLUMNS).min(cols);
            assert_eq!(pieces, cols.div_ceil(block), "[{rows}, {cols}]");
        }
        assert!(
            transposed_pieces(ElementSlice::F32(&[1.0; 6]), 4, 2, "w", &mut |_| Ok(())).is_err()
        );
        Ok(())
    }
}
