// Sparse decode GEMV: y = W (x * [|x| > tau]) for 1..R rows of x, reading only the weight rows of kept channels.
//
// W is stored transposed, [in, out] row-major (row i = all weights of input channel i, contiguous), so a dropped
// channel costs no weight bytes at all. One launch, no workspace: a cluster of C blocks owns TN output columns of
// one projection and R rows of x; each block of the cluster takes 1/C of the input channels (split-K), walks them
// in chunks of KC, and per chunk
//   1. computes the keep mask (union over its rows) and compacts the kept channel numbers into shared memory
//      (ballot + popc, in order: no host sync, no torch.nonzero),
//   2. streams the kept weight rows' TN-wide segments with 16-byte loads, U loads in flight per thread,
//      accumulating in fp32; when nearly every channel is kept it walks all rows instead (the dense path),
//   3. after the last chunk, reduces across warps in shared memory, then across the cluster's blocks through
//      distributed shared memory (Hopper), and writes its outputs (+ bias) once.
// Split-K keeps both the per-block mask work and the column tile's row segments large enough (128-256 bytes)
// while still putting 2-4 blocks on every multiprocessor; the cluster reduction needs no global scratch.
// Fused groups (q/k/v, gate/up) are one launch over the concatenated W with one tau row per projection; a block's
// columns never straddle two projections.
//
// Configuration comes from -D macros (NVRTC options), so each PTX holds exactly one entry point:
//   WSP_NAME kernel name, WSP_F16 (0: bfloat16, 1: float16), WSP_R rows per block (1, 2, 4, 8),
//   WSP_TN output columns per block, WSP_V elements per load (8 or 1), WSP_BIAS (0 or 1),
//   WSP_C blocks per cluster sharing one column tile (1, 2, 4, 8; above 1 needs sm_90).
// Entry-point parameters follow TensorRT's ahead-of-time order: inputs, int32 extras, outputs (docs/KERNEL_ABI.md).
// No headers: NVRTC compiles this without any include path.

typedef unsigned short u16;
typedef unsigned int u32;

#ifndef WSP_F16
#define WSP_F16 0
#endif
#ifndef WSP_R
#define WSP_R 1
#endif
#ifndef WSP_TN
#define WSP_TN 32
#endif
#ifndef WSP_V
#define WSP_V 8
#endif
#ifndef WSP_BIAS
#define WSP_BIAS 0
#endif
#ifndef WSP_C
#define WSP_C 1
#endif
#ifndef WSP_NAME
#define WSP_NAME wsp_gemv
#endif

constexpr int R = WSP_R;
constexpr int TN = WSP_TN;
constexpr int V = WSP_V;
constexpr int C = WSP_C;
constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;
constexpr int TPR = TN / V;            // threads that share one weight row segment
constexpr int RL = THREADS / TPR;      // weight rows read at once by the block
constexpr int KC = 8192 / R;           // input channels per chunk: xs stays 16 KB for every R
constexpr int KW = KC / WARPS;         // channels per warp in the mask pass
constexpr int U = R <= 2 ? 8 : 4;      // independent weight loads in flight per thread
constexpr int DENSE_NUM = 15, DENSE_DEN = 16;  // dense walk when >= 15/16 of a chunk is kept

static_assert(V == 8 || V == 1, "V is 8 (16-byte loads) or 1");
static_assert(TPR >= 1 && TPR <= 32 && 32 % TPR == 0, "a row segment must fit in one warp");
static_assert(KW % 32 == 0, "chunk must split evenly over warps");
static_assert(C == 1 || C == 2 || C == 4 || C == 8, "cluster of 1, 2, 4 or 8 blocks");

#if WSP_C > 1
// Distributed shared memory: the address of `p` in block `rank` of this cluster, a read, and a cluster barrier.
__device__ __forceinline__ float ld_cluster(const float* p, u32 rank) {
    u32 local, remote;
    float v;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(local) : "l"(p));
    asm("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}

__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
#define WSP_CLUSTER __cluster_dims__(WSP_C, 1, 1)
#else
#define WSP_CLUSTER
#endif

__device__ __forceinline__ float to_f32(u16 h) {
#if WSP_F16
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    return __uint_as_float(((u32)h) << 16);
#endif
}

__device__ __forceinline__ u16 from_f32(float f) {
    u16 h;
#if WSP_F16
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
#else
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
#endif
    return h;
}

// Two packed halves of a 32-bit word, low first.
__device__ __forceinline__ void unpack2(u32 w, float& lo, float& hi) {
#if WSP_F16
    lo = to_f32((u16)(w & 0xffffu));
    hi = to_f32((u16)(w >> 16));
#else
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
#endif
}

struct Vec {
    u32 w[V == 8 ? 4 : 1];
};

// Weights are read once: keep them out of L1, and let L2 fetch the 256-byte neighbourhood that the blocks
// owning the neighbouring columns of the same row read next.
__device__ __forceinline__ Vec load_w(const u16* p) {
    Vec v;
#if WSP_V == 8
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3]) : "l"(p));
#else
    u16 h;
    asm("ld.global.nc.L1::no_allocate.u16 %0, [%1];" : "=h"(h) : "l"(p));
    v.w[0] = h;
#endif
    return v;
}

__device__ __forceinline__ void zero(Vec& v) {
#pragma unroll
    for (int j = 0; j < (V == 8 ? 4 : 1); j++) v.w[j] = 0u;
}

// The R masked x values of one channel, from shared memory (R halves, contiguous).
__device__ __forceinline__ void load_x(const u16* xs, int ch, float (&xv)[R]) {
    const u16* p = xs + ch * R;
    if constexpr (R == 1) {
        xv[0] = to_f32(p[0]);
    } else if constexpr (R == 2) {
        u32 w = *reinterpret_cast<const u32*>(p);
        unpack2(w, xv[0], xv[1]);
    } else if constexpr (R == 4) {
        uint2 w = *reinterpret_cast<const uint2*>(p);
        unpack2(w.x, xv[0], xv[1]);
        unpack2(w.y, xv[2], xv[3]);
    } else {
        uint4 w = *reinterpret_cast<const uint4*>(p);
        unpack2(w.x, xv[0], xv[1]);
        unpack2(w.y, xv[2], xv[3]);
        unpack2(w.z, xv[4], xv[5]);
        unpack2(w.w, xv[6], xv[7]);
    }
}

__device__ __forceinline__ void fma_row(const Vec& wv, const float (&xv)[R], float (&acc)[R][V]) {
    float wf[V];
#if WSP_V == 8
#pragma unroll
    for (int j = 0; j < 4; j++) unpack2(wv.w[j], wf[2 * j], wf[2 * j + 1]);
#else
    wf[0] = to_f32((u16)wv.w[0]);
#endif
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int v = 0; v < V; v++) acc[r][v] = fmaf(xv[r], wf[v], acc[r][v]);
}

extern "C" __global__ void __launch_bounds__(THREADS) WSP_CLUSTER WSP_NAME(
    const u16* __restrict__ x,      // [n_rows, in]
    const u16* __restrict__ w,      // [in, ldw], columns 0..out0+out1+out2
    const float* __restrict__ tau,  // [P, in]
#if WSP_BIAS
    const u16* __restrict__ bias,   // [out0 + out1 + out2]
#endif
    int n_rows, int in, int ldw, int out0, int out1, int out2,
    u16* __restrict__ y)            // [n_rows, out0 + out1 + out2]
{
    // xs (masked x of the chunk) and the final cross-warp reduction never live at the same time.
    constexpr int XS_BYTES = KC * R * 2;
    constexpr int RED_BYTES = WARPS * R * TN * 4;
    constexpr int POOL = XS_BYTES > RED_BYTES ? XS_BYTES : RED_BYTES;
    __shared__ __align__(16) unsigned char pool[POOL];
    __shared__ u16 list[KC];
    __shared__ int warp_count[WARPS];
    u16* xs = reinterpret_cast<u16*>(pool);
    float* red = reinterpret_cast<float*>(pool);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int out = out0 + out1 + out2;

    // Which projection and columns this block's cluster owns, and which slice of the input channels is its own.
    const int t0 = (out0 + TN - 1) / TN, t1 = (out1 + TN - 1) / TN;
    const int rank = blockIdx.x % C;  // clusters are C consecutive blocks along x
    int t = blockIdx.x / C, p, off, width;
    if (t < t0) {
        p = 0; off = 0; width = out0;
    } else if (t < t0 + t1) {
        t -= t0; p = 1; off = out0; width = out1;
    } else {
        t -= t0 + t1; p = 2; off = out0 + out1; width = out2;
    }
    const int col_end = off + width;
    const int rl = tid / TPR, cl = tid % TPR;
    const int col = off + t * TN + cl * V;
    const bool col_ok = col < col_end;
    const float* tau_p = tau + (size_t)p * in;
    const int row0 = blockIdx.y * R;
    const int rows = min(R, n_rows - row0);
    const u16* xrow = x + (size_t)row0 * in;
    const int k_per = ((in + C - 1) / C + 31) / 32 * 32;
    const int k_begin = min(in, rank * k_per), k_end = min(in, k_begin + k_per);

    float acc[R][V];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int v = 0; v < V; v++) acc[r][v] = 0.f;

    for (int k0 = k_begin; k0 < k_end; k0 += KC) {
        const int kc = min(KC, k_end - k0);

        // 1. Mask (union over rows) and masked x; each warp owns KW consecutive channels of the chunk.
        //    (Spreading a short chunk over all warps with a run-time width was tried: it doubled the registers,
        //    halved occupancy and ran slower on the H200.)
        u32 masks[KW / 32];
        int mine = 0;
#pragma unroll
        for (int s = 0; s < KW / 32; s++) {
            const int c = warp * KW + s * 32 + lane;
            bool keep = false;
            if (c < kc) {
                const float th = tau_p[k0 + c];
#pragma unroll
                for (int r = 0; r < R; r++) {
                    u16 h = r < rows ? xrow[(size_t)r * in + k0 + c] : (u16)0;
                    const bool kr = fabsf(to_f32(h)) > th;
                    keep |= kr;
                    xs[c * R + r] = kr ? h : (u16)0;
                }
            }
            masks[s] = __ballot_sync(0xffffffffu, keep);
            mine += __popc(masks[s]);
        }
        if (lane == 0) warp_count[warp] = mine;
        __syncthreads();
        int base = 0, total = 0;
#pragma unroll
        for (int i = 0; i < WARPS; i++) {
            const int c = warp_count[i];
            base += i < warp ? c : 0;
            total += c;
        }
        const bool dense = total * DENSE_DEN >= kc * DENSE_NUM;
        if (!dense) {
            const u32 below = (1u << lane) - 1u;
#pragma unroll
            for (int s = 0; s < KW / 32; s++) {
                if ((masks[s] >> lane) & 1u) list[base + __popc(masks[s] & below)] = (u16)(warp * KW + s * 32 + lane);
                base += __popc(masks[s]);
            }
        }
        __syncthreads();

        // 2. Stream the kept rows' segments: row e of the walk is list[e] (or e itself on the dense path).
        const int n_walk = dense ? kc : total;
        const u16* wk = w + (size_t)k0 * ldw + col;
        for (int e0 = rl; e0 < n_walk; e0 += RL * U) {
            Vec wv[U];
            int ch[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int e = e0 + u * RL;
                ch[u] = e < n_walk ? (dense ? e : (int)list[e]) : -1;
                if (ch[u] >= 0 && col_ok) wv[u] = load_w(wk + (size_t)ch[u] * ldw);
                else zero(wv[u]);
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (ch[u] >= 0) {
                    float xv[R];
                    load_x(xs, ch[u], xv);
                    fma_row(wv[u], xv, acc);
                }
            }
        }
        __syncthreads();  // xs and list are rewritten by the next chunk
    }

    // 3. Reduce over the RL row lanes: first inside each warp (lanes cl, cl + TPR, ...), then across warps.
#pragma unroll
    for (int o = TPR; o < 32; o <<= 1)
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int v = 0; v < V; v++) acc[r][v] += __shfl_xor_sync(0xffffffffu, acc[r][v], o);
    if (lane < TPR) {
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int v = 0; v < V; v++) red[(warp * R + r) * TN + cl * V + v] = acc[r][v];
    }
    __syncthreads();
    // Sum over warps in place: entry i of warp 0's slot becomes this block's partial for output i.
    for (int i = tid; i < R * TN; i += THREADS) {
        float s = 0.f;
#pragma unroll
        for (int wi = 0; wi < WARPS; wi++) s += red[wi * R * TN + i];
        red[i] = s;
    }
#if WSP_C > 1
    cluster_sync();  // every block's partials are in its shared memory
#else
    __syncthreads();
#endif
    // Each block of the cluster finishes an interleaved share of the outputs, reading all C partials.
    for (int i = tid + rank * THREADS; i < R * TN; i += THREADS * C) {
        const int r = i / TN, c = off + t * TN + i % TN;
        if (r >= rows || c >= col_end) continue;
        float s = red[i];
#if WSP_C > 1
#pragma unroll
        for (int j = 1; j < C; j++) s += ld_cluster(red + i, (rank + j) % C);
#endif
#if WSP_BIAS
        s += to_f32(bias[c]);
#endif
        y[(size_t)(row0 + r) * out + c] = from_f32(s);
    }
#if WSP_C > 1
    cluster_sync();  // no block leaves while another may still read its shared memory
#endif
}
