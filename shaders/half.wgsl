// 16-bit floats held in the low 16 bits of a u32, and the random bits of stochastic rounding.
// Integer formulas only, so that every conversion is exact and the same on every device (WGSL
// has no bf16, and `pack2x16float` may round either way). Each function is the `half` crate's
// conversion bit for bit, NaN payloads included (`tests/half.rs` holds them to it).

/// bf16 bits widened to f32 (exact).
fn bf16_to_f32(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}

/// f32 to bf16, rounded to nearest even; overflow goes to infinity, a NaN stays a NaN with its
/// quiet bit set.
fn f32_to_bf16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if (b & 0x7fffffffu) > 0x7f800000u {
        return (b >> 16u) | 0x40u;
    }
    // Adding 0x7fff plus the kept lowest bit carries exactly when the cut part is above half,
    // or at half with an odd lowest bit.
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

/// f16 bits widened to f32 (exact: every f16, subnormals included, is normal in f32).
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = h & 0x7c00u;
    let mantissa = h & 0x03ffu;
    if (h & 0x7fffu) == 0u {
        return bitcast<f32>(sign);
    }
    if exponent == 0x7c00u {
        if mantissa == 0u {
            return bitcast<f32>(sign | 0x7f800000u);
        }
        return bitcast<f32>(sign | 0x7fc00000u | (mantissa << 13u));
    }
    if exponent == 0u {
        // Subnormal: shift the leading one into the implicit bit.
        let e = countLeadingZeros(mantissa) - 22u;
        return bitcast<f32>(sign | ((112u - e) << 23u) | ((mantissa << (14u + e)) & 0x7fffffu));
    }
    return bitcast<f32>(sign | (((exponent >> 10u) + 112u) << 23u) | (mantissa << 13u));
}

/// f32 to f16, rounded to nearest even, subnormals included; overflow goes to infinity, a NaN
/// stays a NaN with its quiet bit set.
fn f32_to_f16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let exponent = (b >> 23u) & 0xffu;
    let mantissa = b & 0x7fffffu;
    if exponent == 0xffu {
        return sign | 0x7c00u | select(0u, 0x200u, mantissa != 0u) | (mantissa >> 13u);
    }
    // The exponent rebiased for f16: 1..30 is normal, 31 and more overflow, 0 and less is
    // subnormal or zero.
    let e = i32(exponent) - 112;
    if e >= 31 {
        return sign | 0x7c00u;
    }
    if e <= 0 {
        if 14 - e > 24 {
            return sign;
        }
        let full = mantissa | 0x800000u;
        let shift = u32(14 - e);
        let half_bit = 1u << (shift - 1u);
        // Round up above half, or at half when the kept lowest bit is odd.
        let up = (full & half_bit) != 0u && (full & (3u * half_bit - 1u)) != 0u;
        return sign | ((full >> shift) + select(0u, 1u, up));
    }
    let up = (mantissa & 0x1000u) != 0u && (mantissa & 0x2fffu) != 0u;
    return (sign | (u32(e) << 10u) | (mantissa >> 13u)) + select(0u, 1u, up);
}

/// A 32-bit hash with full avalanche (`lowbias32` from Chris Wellons' hash-prospector):
/// `fusedopt::optim::hash32`.
fn hash32(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x21f0aaadu;
    h ^= h >> 15u;
    h *= 0x735a2d97u;
    return h ^ (h >> 15u);
}

/// 16 random bits for element (`hi` << 32 | `lo`) under a step's `key`:
/// `fusedopt::optim::random_bits`.
fn random_bits(key: vec2<u32>, lo: u32, hi: u32) -> u32 {
    return hash32(hash32(lo ^ key.x) ^ hi ^ key.y) >> 16u;
}

/// f32 to bf16 rounded stochastically with the 16 random bits `r` (up with probability equal
/// to the cut part's share of the gap); a NaN as `f32_to_bf16`.
fn f32_to_bf16_stochastic(x: f32, r: u32) -> u32 {
    let b = bitcast<u32>(x);
    if (b & 0x7fffffffu) > 0x7f800000u {
        return f32_to_bf16(x);
    }
    return (b + (r & 0xffffu)) >> 16u;
}
