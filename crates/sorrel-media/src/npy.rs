//! NumPy's `.npy` header (format 1.0), for writing frames as arrays: the CLI's float32 output and the
//! benchmark's uint8 frames for the side-by-side Python run. The data that follows is C-order.

/// The header of an `.npy` file holding `shape` elements of NumPy type `descr` (`<f4`, `|u1`, ...).
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let dims = if shape.len() == 1 {
        format!("{dims},")
    } else {
        dims
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' must be a multiple of 64.
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}
