//! Element types: ONNX codes and weight conversion (fp32 / fp16 / bf16).

use candle_core::{CpuStorage, Device, Storage, Tensor};
use half::{bf16, f16};

use crate::error::{Error, Result};

/// ONNX `TensorProto.DataType`, for the types the exporter writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Float,
    Uint8,
    Int8,
    Int32,
    Int64,
    Bool,
    Float16,
    Double,
    BFloat16,
}

impl DataType {
    pub fn onnx_code(self) -> i32 {
        match self {
            DataType::Float => 1,
            DataType::Uint8 => 2,
            DataType::Int8 => 3,
            DataType::Int32 => 6,
            DataType::Int64 => 7,
            DataType::Bool => 9,
            DataType::Float16 => 10,
            DataType::Double => 11,
            DataType::BFloat16 => 16,
        }
    }

    pub fn from_onnx_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => DataType::Float,
            2 => DataType::Uint8,
            3 => DataType::Int8,
            6 => DataType::Int32,
            7 => DataType::Int64,
            9 => DataType::Bool,
            10 => DataType::Float16,
            11 => DataType::Double,
            16 => DataType::BFloat16,
            _ => return None,
        })
    }

    pub fn size_bytes(self) -> usize {
        match self {
            DataType::Uint8 | DataType::Int8 | DataType::Bool => 1,
            DataType::Float16 | DataType::BFloat16 => 2,
            DataType::Float | DataType::Int32 => 4,
            DataType::Int64 | DataType::Double => 8,
        }
    }
}

/// Borrowed elements in one of the types weights arrive in.
#[derive(Debug, Clone, Copy)]
pub enum ElementSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    F64(&'a [f64]),
    I64(&'a [i64]),
    I32(&'a [i32]),
    U32(&'a [u32]),
    U8(&'a [u8]),
}

/// Elements converted per chunk: bounds the conversion buffer whatever the tensor size.
const CHUNK_ELEMENTS: usize = 1 << 16;

impl ElementSlice<'_> {
    pub fn len(&self) -> usize {
        match self {
            ElementSlice::F32(s) => s.len(),
            ElementSlice::F16(s) => s.len(),
            ElementSlice::BF16(s) => s.len(),
            ElementSlice::F64(s) => s.len(),
            ElementSlice::I64(s) => s.len(),
            ElementSlice::I32(s) => s.len(),
            ElementSlice::U32(s) => s.len(),
            ElementSlice::U8(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_float(&self) -> bool {
        matches!(
            self,
            ElementSlice::F32(_)
                | ElementSlice::F16(_)
                | ElementSlice::BF16(_)
                | ElementSlice::F64(_)
        )
    }

    fn sub(&self, start: usize, end: usize) -> Self {
        match *self {
            ElementSlice::F32(s) => ElementSlice::F32(&s[start..end]),
            ElementSlice::F16(s) => ElementSlice::F16(&s[start..end]),
            ElementSlice::BF16(s) => ElementSlice::BF16(&s[start..end]),
            ElementSlice::F64(s) => ElementSlice::F64(&s[start..end]),
            ElementSlice::I64(s) => ElementSlice::I64(&s[start..end]),
            ElementSlice::I32(s) => ElementSlice::I32(&s[start..end]),
            ElementSlice::U32(s) => ElementSlice::U32(&s[start..end]),
            ElementSlice::U8(s) => ElementSlice::U8(&s[start..end]),
        }
    }

    fn f32_at(&self, i: usize) -> f32 {
        match self {
            ElementSlice::F32(s) => s[i],
            ElementSlice::F16(s) => s[i].to_f32(),
            ElementSlice::BF16(s) => s[i].to_f32(),
            ElementSlice::F64(s) => s[i] as f32,
            ElementSlice::I64(s) => s[i] as f32,
            ElementSlice::I32(s) => s[i] as f32,
            ElementSlice::U32(s) => s[i] as f32,
            ElementSlice::U8(s) => s[i] as f32,
        }
    }

    fn f64_at(&self, i: usize) -> f64 {
        match self {
            ElementSlice::F64(s) => s[i],
            _ => self.f32_at(i) as f64,
        }
    }

    fn i64_at(&self, i: usize) -> Option<i64> {
        match self {
            ElementSlice::I64(s) => Some(s[i]),
            ElementSlice::I32(s) => Some(s[i] as i64),
            ElementSlice::U32(s) => Some(s[i] as i64),
            ElementSlice::U8(s) => Some(s[i] as i64),
            _ => None,
        }
    }
}

/// Converts `src` to `to` as little-endian bytes, handing them to `sink` chunk by chunk.
/// `name` is only for errors. Floats stay floats and integers integers; a finite value that
/// would overflow fp16 / bf16 (to infinity) is an error rather than a silent inf.
pub fn encode(
    src: ElementSlice<'_>,
    to: DataType,
    name: &str,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    encode_at(src, 0, to, name, sink)
}

/// [`encode`] for a piece of a larger tensor whose first element is element `first_index`
/// of the whole (so that an error names the element of the tensor, not of the piece).
pub fn encode_at(
    src: ElementSlice<'_>,
    first_index: usize,
    to: DataType,
    name: &str,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let float_target = matches!(
        to,
        DataType::Float | DataType::Float16 | DataType::BFloat16 | DataType::Double
    );
    let int_target = matches!(to, DataType::Int64 | DataType::Int32);
    if !((src.is_float() && float_target) || (!src.is_float() && int_target)) {
        return Err(Error::convert(
            name,
            format!(
                "cannot store {src_kind} elements as {to:?}",
                src_kind = kind(&src)
            ),
        ));
    }
    let mut buf = Vec::with_capacity(CHUNK_ELEMENTS.min(src.len()) * to.size_bytes());
    let mut start = 0;
    while start < src.len() {
        let end = (start + CHUNK_ELEMENTS).min(src.len());
        buf.clear();
        encode_chunk(src.sub(start, end), to, name, first_index + start, &mut buf)?;
        sink(&buf)?;
        start = end;
    }
    Ok(())
}

fn kind(src: &ElementSlice<'_>) -> &'static str {
    match src {
        ElementSlice::F32(_) => "f32",
        ElementSlice::F16(_) => "f16",
        ElementSlice::BF16(_) => "bf16",
        ElementSlice::F64(_) => "f64",
        ElementSlice::I64(_) => "i64",
        ElementSlice::I32(_) => "i32",
        ElementSlice::U32(_) => "u32",
        ElementSlice::U8(_) => "u8",
    }
}

fn encode_chunk(
    src: ElementSlice<'_>,
    to: DataType,
    name: &str,
    first_index: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    let overflow = |i: usize, v: f32| {
        Error::convert(
            name,
            format!(
                "element {} = {v} is outside the {to:?} range",
                first_index + i
            ),
        )
    };
    match (to, src) {
        (DataType::Float16, ElementSlice::F16(s)) => s
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        (DataType::BFloat16, ElementSlice::BF16(s)) => s
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        (DataType::Float, _) => {
            for i in 0..src.len() {
                out.extend_from_slice(&src.f32_at(i).to_le_bytes());
            }
        }
        (DataType::Double, _) => {
            for i in 0..src.len() {
                out.extend_from_slice(&src.f64_at(i).to_le_bytes());
            }
        }
        (DataType::Float16, _) => {
            for i in 0..src.len() {
                let v = src.f32_at(i);
                let h = f16::from_f32(v);
                if h.is_infinite() && v.is_finite() {
                    return Err(overflow(i, v));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
        (DataType::BFloat16, _) => {
            for i in 0..src.len() {
                let v = src.f32_at(i);
                let h = bf16::from_f32(v);
                if h.is_infinite() && v.is_finite() {
                    return Err(overflow(i, v));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
        (DataType::Int64, _) => {
            for i in 0..src.len() {
                let v = src.i64_at(i).unwrap_or_default();
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        (DataType::Int32, _) => {
            for i in 0..src.len() {
                let v = src.i64_at(i).unwrap_or_default();
                let v = i32::try_from(v).map_err(|_| {
                    Error::convert(
                        name,
                        format!("element {} = {v} does not fit i32", first_index + i),
                    )
                })?;
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        (other, _) => {
            return Err(Error::convert(
                name,
                format!("storing as {other:?} is not supported"),
            ))
        }
    }
    Ok(())
}

/// Calls `f` with the elements of `t` in row-major order. A contiguous CPU tensor is read in
/// place (no copy, however large); other tensors are first made contiguous on the CPU.
pub fn with_tensor_elements<R>(
    t: &Tensor,
    name: &str,
    f: impl FnOnce(ElementSlice<'_>) -> Result<R>,
) -> Result<R> {
    let t = if t.device().is_cpu() {
        t.contiguous()?
    } else {
        t.to_device(&Device::Cpu)?.contiguous()?
    };
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::convert(name, "tensor is not contiguous after contiguous()"))?;
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::convert(
            name,
            "tensor is not on the CPU after to_device",
        ));
    };
    let slice = match cpu {
        CpuStorage::F32(v) => ElementSlice::F32(&v[start..end]),
        CpuStorage::F16(v) => ElementSlice::F16(&v[start..end]),
        CpuStorage::BF16(v) => ElementSlice::BF16(&v[start..end]),
        CpuStorage::F64(v) => ElementSlice::F64(&v[start..end]),
        CpuStorage::I64(v) => ElementSlice::I64(&v[start..end]),
        CpuStorage::I32(v) => ElementSlice::I32(&v[start..end]),
        CpuStorage::U32(v) => ElementSlice::U32(&v[start..end]),
        CpuStorage::U8(v) => ElementSlice::U8(&v[start..end]),
        _ => {
            return Err(Error::convert(
                name,
                format!("candle dtype {:?} cannot be exported", t.dtype()),
            ))
        }
    };
    f(slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(src: ElementSlice<'_>, to: DataType) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        encode(src, to, "t", &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn f32_to_f16_round_trips_representable_values() {
        let src = [0.0f32, 1.0, -2.5, 65504.0, 1e-3];
        let bytes = collect(ElementSlice::F32(&src), DataType::Float16).unwrap();
        let back: Vec<f32> = bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        assert_eq!(&back[..4], &src[..4]);
        assert!((back[4] - 1e-3).abs() < 1e-6);
    }

    #[test]
    fn fp16_overflow_names_tensor_and_element() {
        let err = collect(ElementSlice::F32(&[1.0, 7e4]), DataType::Float16).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("tensor t") && msg.contains("element 1"),
            "{msg}"
        );
    }

    #[test]
    fn chunking_keeps_order_and_indices() {
        let src: Vec<f32> = (0..CHUNK_ELEMENTS * 2 + 3).map(|i| i as f32).collect();
        let mut chunks = 0;
        let mut out = Vec::new();
        encode(ElementSlice::F32(&src), DataType::Float, "t", &mut |b| {
            chunks += 1;
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(chunks, 3);
        let back: Vec<f32> = out
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, src);
    }

    #[test]
    fn candle_bf16_tensor_reads_strided_views() {
        let t = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap()
            .to_dtype(candle_core::DType::BF16)
            .unwrap()
            .t()
            .unwrap();
        let bytes = with_tensor_elements(&t, "t", |s| collect(s, DataType::Float)).unwrap();
        let back: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, [0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn float_to_int_is_refused() {
        assert!(collect(ElementSlice::F32(&[1.0]), DataType::Int64).is_err());
        let ok = collect(ElementSlice::U32(&[7]), DataType::Int64).unwrap();
        assert_eq!(ok, 7i64.to_le_bytes());
    }
}
