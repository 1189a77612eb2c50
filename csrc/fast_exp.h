// exp(x) for x <= 0 in fp32, vectorizable (no libm call), shared by the CPU kernels.
//
// n = round(x / ln2) by the 1.5 * 2^23 trick, r = x - n ln2 with a two-part ln2 (Cody-Waite), the
// Cephes degree-6 polynomial for exp(r) on |r| <= ln2 / 2, and 2^n built in the exponent bits.
// Max relative error ~2 ulp (std::exp: < 1). Inputs below -87 are clamped there, giving
// exp(-87) ~ 1.6e-38 instead of a denormal; each caller says what that means for it.
#pragma once

#include <cstdint>
#include <cstring>

namespace spar_fast {

inline float exp_nonpositive_clamped(float x) {
  x = x > -87.0f ? x : -87.0f;
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + round_magic) - round_magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return poly * scale;
}

}  // namespace spar_fast
