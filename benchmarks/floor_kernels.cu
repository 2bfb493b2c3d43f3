// The floor of an activation-sparse decode GEMV (benchmarks/bench_floor.py): the least a call pays besides
// streaming its kept weight bytes. Entry points launched like the package's kernels (kernels.launch: inputs, int32
// extras, outputs), so CUDA graphs capture them exactly like a real call.
//
// wsp_floor_chain: the minimal dependent chain. Every thread reads x's first word (written by the previous call in
// the graph, so in L2: call i of a ring of n reads x_i and writes x_{i+1 mod n}); that value (a call counter c)
// chooses the weight position, an address into this call's weight copy that no recent call read (so in DRAM); each
// block loads its WSP_SEG-byte row segment there (the real kernel's load instruction), reduces it across the block
// (warp shuffles, shared memory, one barrier, as the real kernel's reduction) and writes one y value; block 0 writes
// c + 1 into the next call's x. Position = (c / copies) mod positions: call c reads copy c mod copies (the ring
// rotates copies in step with the counter), and a (copy, position) pair comes back only after copies * positions
// calls, i.e. after every copy has been read in full. Positions advance in address order (a copy's next position is
// the next WSP_SEG * blocks bytes, rounded up to whole rows), so DRAM pages and TLB entries are reused as much as a
// real call's first rows would allow: no cost the real kernel avoids. positions = 1 pins the address: the segment
// then comes from L2 after the first round (the chain without its DRAM trip, a control).
//
// wsp_floor_empty: one block that returns at once (same parameters): what a launch costs in the same kind of graph.
//
// wsp_floor_read: no dependency at all, only the bytes: the grid reads the first `positions` 16-byte vectors of this
// call's weight copy (WSP_UNROLL independent loads in flight a thread, grid-stride), folds them and writes one
// value a block. The fastest any kernel here can stream exactly a cell's bytes, ramp-up and tail included.
// wsp_floor_dread: the same read behind the chain's dependency (x first, addresses from it, a block reduction, y):
// the least any activation-sparse GEMV of those bytes can take, even with its kept rows contiguous.
//
// No headers: NVRTC compiles this without any include path.

#ifndef WSP_SEG
#define WSP_SEG 256  // bytes of weight row each block reads: one 128-column bf16 (256-column 1-byte) segment
#endif
#ifndef WSP_UNROLL
#define WSP_UNROLL 4
#endif
#ifndef WSP_THREADS
#define WSP_THREADS 256
#endif
// L2 prefetch of the 16-byte weight loads: 0 none (as the shipped GEMV's loads since build v5, and faster here too:
// docs/BENCHMARKS.md "Build v5"), 128, or 256 bytes (the floor as measured before build v5).
#ifndef WSP_L2PF
#define WSP_L2PF 0
#endif
#if WSP_L2PF == 256
#define WSP_PF ".L2::256B"
#elif WSP_L2PF == 128
#define WSP_PF ".L2::128B"
#else
#define WSP_PF ""
#endif

typedef unsigned int u32;

extern "C" __global__ void __launch_bounds__(WSP_THREADS) wsp_floor_chain(
    const u32* __restrict__ x, const unsigned char* __restrict__ w, int positions, int step, int copies,
    u32* __restrict__ y, u32* __restrict__ x_next) {
    __shared__ u32 red[WSP_THREADS / 32];
    const u32 c = x[0];  // one uniform load: an L2 round trip
    const unsigned long long pos = c / (u32)copies % (u32)positions;
    const unsigned char* seg = w + pos * (unsigned)step + (size_t)blockIdx.x * WSP_SEG;
    u32 v = 0;
    if (threadIdx.x < WSP_SEG / 16) {  // the segment, 16 bytes a thread: a DRAM round trip behind the first
        u32 a, b, d, e;
        asm("ld.global.nc.L1::no_allocate" WSP_PF ".v4.u32 {%0, %1, %2, %3}, [%4];"
            : "=r"(a), "=r"(b), "=r"(d), "=r"(e) : "l"(seg + threadIdx.x * 16));
        v = a + b + d + e;
    }
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < WSP_THREADS / 32 ? red[threadIdx.x] : 0;
        for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0) {
            y[blockIdx.x] = v;
            if (blockIdx.x == 0) x_next[0] = c + 1;
        }
    }
}

extern "C" __global__ void __launch_bounds__(WSP_THREADS) wsp_floor_empty(
    const u32* __restrict__ x, const unsigned char* __restrict__ w, int positions, int step, int copies,
    u32* __restrict__ y, u32* __restrict__ x_next) {}

// The bare read (DEP false) and the dependent read (DEP true: the floor of any activation-sparse GEMV of these
// bytes). Dependent: every thread first reads x's counter (written by the previous call, in L2, as the chain) and
// offsets its addresses by counter * step (the host passes step 0: the same bytes, but no load can issue before x
// arrives, as no sparse GEMV knows its rows before x), then the block reduces its fold (warps, shared memory, one
// barrier) and writes y, and block 0 writes the next call's counter.
template <bool DEP>
__device__ __forceinline__ void read_body(const u32* __restrict__ x, const unsigned char* __restrict__ w,
                                          int positions, int step, u32* __restrict__ y, u32* __restrict__ x_next) {
    const u32 c = DEP ? x[0] : 0u;
    if (DEP) w += (size_t)c * (u32)step;
    const long long stride = (long long)gridDim.x * WSP_THREADS;
    u32 v = 0;
    for (long long i = (long long)blockIdx.x * WSP_THREADS + threadIdx.x; i < positions; i += stride * WSP_UNROLL) {
        u32 a[WSP_UNROLL][4];
#pragma unroll
        for (int u = 0; u < WSP_UNROLL; ++u) {
            const long long j = i + u * stride;
            a[u][0] = a[u][1] = a[u][2] = a[u][3] = 0;
            if (j < positions)
                asm volatile("ld.global.nc.L1::no_allocate" WSP_PF ".v4.u32 {%0, %1, %2, %3}, [%4];"
                             : "=r"(a[u][0]), "=r"(a[u][1]), "=r"(a[u][2]), "=r"(a[u][3]) : "l"(w + j * 16));
        }
#pragma unroll
        for (int u = 0; u < WSP_UNROLL; ++u) v ^= a[u][0] ^ a[u][1] ^ a[u][2] ^ a[u][3];
    }
    for (int o = 16; o > 0; o /= 2) v ^= __shfl_xor_sync(0xffffffffu, v, o);
    if (DEP) {
        __shared__ u32 red[WSP_THREADS / 32];
        if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
        __syncthreads();
        if (threadIdx.x < 32) {
            v = threadIdx.x < WSP_THREADS / 32 ? red[threadIdx.x] : 0;
            for (int o = 16; o > 0; o /= 2) v ^= __shfl_xor_sync(0xffffffffu, v, o);
        }
    }
    if (threadIdx.x == 0) {
        y[blockIdx.x] = v;  // asm volatile keeps every warp's loads; the bare read writes warp 0's fold
        if (DEP && blockIdx.x == 0) x_next[0] = c + 1;
    }
}

extern "C" __global__ void __launch_bounds__(WSP_THREADS) wsp_floor_read(
    const u32* __restrict__ x, const unsigned char* __restrict__ w, int positions, int step, int copies,
    u32* __restrict__ y, u32* __restrict__ x_next) {
    read_body<false>(x, w, positions, step, y, x_next);
}

extern "C" __global__ void __launch_bounds__(WSP_THREADS) wsp_floor_dread(
    const u32* __restrict__ x, const unsigned char* __restrict__ w, int positions, int step, int copies,
    u32* __restrict__ y, u32* __restrict__ x_next) {
    read_body<true>(x, w, positions, step, y, x_next);
}

// The block's fold of its threads' v (XOR: order-free), one word of y per block: keeps every load of a read-only
// kernel alive and checkable.
__device__ __forceinline__ void store_block_fold(u32 v, u32* __restrict__ y) {
    __shared__ u32 red[WSP_THREADS / 32];
    for (int o = 16; o > 0; o /= 2) v ^= __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < WSP_THREADS / 32 ? red[threadIdx.x] : 0;
        for (int o = 16; o > 0; o /= 2) v ^= __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0) y[blockIdx.x] = v;
    }
}

// wsp_floor_sdread: today's kernel's weight traffic and nothing else. The same grid (tiles x cluster ranks) reads the
// same 16-byte pieces of the same kept rows in the same order: block (t, rank) takes tile t's projection p, its
// column bytes [tile[t].y, + WSP_SEG), and the kept channels of p in rank's channel range (lst[p], entries
// starts[p][rank] .. starts[p][rank + 1]), stages them in shared memory WSP_KL at a time (today's compaction writes
// its list there too), streams WSP_U loads in flight a thread, folds, reduces across the block and writes y. No
// mask, no x, no multiply-add, no cluster reduction: what is left of today's time when those are gone.
#ifndef WSP_KL
#define WSP_KL 2048
#endif
#ifndef WSP_U
#define WSP_U 4
#endif
extern "C" __global__ void __launch_bounds__(WSP_THREADS) wsp_floor_sdread(
    const int* __restrict__ lst, const int* __restrict__ starts, const int* __restrict__ tile,
    const unsigned char* __restrict__ w, int in, int ldw, int C, u32* __restrict__ y) {
    constexpr int TPR = WSP_SEG / 16, RL = WSP_THREADS / TPR;
    __shared__ int rows[WSP_KL];
    const int t = blockIdx.x / C, rank = blockIdx.x % C, p = tile[2 * t];
    const int lo = starts[p * (C + 1) + rank], hi = starts[p * (C + 1) + rank + 1];
    const unsigned char* wk = w + tile[2 * t + 1] + (threadIdx.x % TPR) * 16;
    u32 v = 0;
    for (int k0 = lo; k0 < hi; k0 += WSP_KL) {
        const int n = min(WSP_KL, hi - k0);
        for (int i = threadIdx.x; i < n; i += WSP_THREADS) rows[i] = lst[(size_t)p * in + k0 + i];
        __syncthreads();
        for (int e = threadIdx.x / TPR; e < n; e += RL * WSP_U) {
            u32 a[WSP_U][4];
#pragma unroll
            for (int u = 0; u < WSP_U; ++u) {
                a[u][0] = a[u][1] = a[u][2] = a[u][3] = 0;
                if (e + u * RL < n)
                    asm volatile("ld.global.nc.L1::no_allocate" WSP_PF ".v4.u32 {%0, %1, %2, %3}, [%4];"
                                 : "=r"(a[u][0]), "=r"(a[u][1]), "=r"(a[u][2]), "=r"(a[u][3])
                                 : "l"(wk + (size_t)rows[e + u * RL] * ldw));
            }
#pragma unroll
            for (int u = 0; u < WSP_U; ++u) v ^= a[u][0] ^ a[u][1] ^ a[u][2] ^ a[u][3];
        }
        __syncthreads();  // rows is rewritten by the next chunk
    }
    store_block_fold(v, y);
}

// wsp_floor_mma: a prototype of the FP8 list GEMV on tensor cores (benchmarks/probe_mma.py), to measure what fewer
// instructions a weight buy; not a shipped kernel. One row of x, e4m3 weights [in, ldw] with a float32 scale a
// column, the kept channels as a list (lst [P, in], their bf16 values xv [P, in]) split over the grid like
// wsp_floor_sdread (tile t = projection tile[2t], first column tile[2t + 1], 128 columns; rank's entries
// starts[p][rank] .. starts[p][rank + 1]). Each warp takes 16 kept entries at a time: lane (g, q) = (lane / 4,
// lane % 4) loads 16 columns (16 * g ..) of the entries 2q, 2q + 1, 2q + 8, 2q + 9, pairs the two rows' bytes
// column by column (one byte permute for two columns), converts each pair to f16x2 (the m16n8k16 A fragment: m =
// column, k = entry) and runs 8 mma.sync m16n8k16 f16 x f16 -> f32 a step, x (as f16) broadcast over B's 8 columns.
// Every lane's D holds its columns' sums (D's columns are equal); warps add up in shared memory. Output: the
// scaled partial sums of rank's entries, float32 y [C, ldw] (the host adds the ranks: no cluster reduction here).
// x must fit f16 (|x| < 65504): a prototype's limit, checked by the script against the float64 reference.
#if __CUDA_ARCH__ >= 890  // the e4m3 conversion: sm_89+
#ifndef WSP_MMA_KL
#define WSP_MMA_KL 2048
#endif
__device__ __forceinline__ u32 f16x2_e4m3x2(u32 pair16) {  // the low 16 bits: two e4m3, low byte first
    u32 out;
    asm("{ .reg .b16 a, b;\n\tmov.b32 {a, b}, %1;\n\tcvt.rn.f16x2.e4m3x2 %0, a; }" : "=r"(out) : "r"(pair16));
    return out;
}
__device__ __forceinline__ u32 f16x2_bf16(unsigned short lo, unsigned short hi) {  // two bf16 -> f16x2
    u32 out;
    const float a = __uint_as_float((u32)lo << 16), b = __uint_as_float((u32)hi << 16);
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(out) : "f"(b), "f"(a));
    return out;
}
__device__ __forceinline__ void mma16816(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
extern "C" __global__ void __launch_bounds__(WSP_THREADS, 2) wsp_floor_mma(
    const int* __restrict__ lst, const unsigned short* __restrict__ xv, const int* __restrict__ starts,
    const int* __restrict__ tile, const unsigned char* __restrict__ w, const float* __restrict__ scale,
    int in, int ldw, int C, float* __restrict__ y) {
    constexpr int WARPS = WSP_THREADS / 32;
    __shared__ int rows[WSP_MMA_KL];
    __shared__ unsigned short xs[WSP_MMA_KL];
    __shared__ float red[WARPS][128];
    const int t = blockIdx.x / C, rank = blockIdx.x % C, p = tile[2 * t], col0 = tile[2 * t + 1];
    const int lo = starts[p * (C + 1) + rank], hi = starts[p * (C + 1) + rank + 1];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, q = lane % 4;
    const unsigned char* wk = w + col0 + 16 * g;
    float d[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++) d[j][0] = d[j][1] = d[j][2] = d[j][3] = 0.f;
    for (int k0 = lo; k0 < hi; k0 += WSP_MMA_KL) {
        const int n = min(WSP_MMA_KL, hi - k0);
        for (int i = threadIdx.x; i < WSP_MMA_KL; i += WSP_THREADS) {  // past n: row 0 (a valid address), x 0
            rows[i] = i < n ? lst[(size_t)p * in + k0 + i] : 0;
            xs[i] = i < n ? xv[(size_t)p * in + k0 + i] : 0;
        }
        __syncthreads();
        const int steps = (n + 15) / 16;
        uint4 cur[4], nxt[4];
        auto issue = [&](int s, uint4 (&v)[4]) {
            const int e = 16 * s + 2 * q;
            if (s < steps) {
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    const int er = e + (r & 1) + 8 * (r >> 1);
                    asm volatile("ld.global.nc.L1::no_allocate" WSP_PF ".v4.u32 {%0, %1, %2, %3}, [%4];"
                                 : "=r"(v[r].x), "=r"(v[r].y), "=r"(v[r].z), "=r"(v[r].w)
                                 : "l"(wk + (size_t)rows[er] * ldw));
                }
            }
        };
        issue(warp, cur);
        for (int s = warp; s < steps; s += WARPS) {
            issue(s + WARPS, nxt);
            const int e = 16 * s + 2 * q;
            const u32 b0 = f16x2_bf16(xs[e], xs[e + 1]), b1 = f16x2_bf16(xs[e + 8], xs[e + 9]);
            const u32 w0[4] = {cur[0].x, cur[0].y, cur[0].z, cur[0].w}, w1[4] = {cur[1].x, cur[1].y, cur[1].z, cur[1].w};
            const u32 w2[4] = {cur[2].x, cur[2].y, cur[2].z, cur[2].w}, w3[4] = {cur[3].x, cur[3].y, cur[3].z, cur[3].w};
#pragma unroll
            for (int j = 0; j < 8; j += 2) {  // columns j, j + 1 (word j / 4 of the first 8) and 8 + j, 9 + j
                const int wd = j / 4, sel = (j % 4) ? 0x7362 : 0x5140;
                const u32 lo01 = __byte_perm(w0[wd], w1[wd], sel), hi01 = __byte_perm(w0[wd + 2], w1[wd + 2], sel);
                const u32 lo23 = __byte_perm(w2[wd], w3[wd], sel), hi23 = __byte_perm(w2[wd + 2], w3[wd + 2], sel);
#pragma unroll
                for (int h = 0; h < 2; h++) {  // h = 0: column j (low bytes of the permutes), 1: column j + 1
                    mma16816(d[j + h], f16x2_e4m3x2(lo01 >> (16 * h)), f16x2_e4m3x2(hi01 >> (16 * h)),
                             f16x2_e4m3x2(lo23 >> (16 * h)), f16x2_e4m3x2(hi23 >> (16 * h)), b0, b1);
                }
            }
#pragma unroll
            for (int r = 0; r < 4; r++) cur[r] = nxt[r];
        }
        __syncthreads();  // rows and xs are rewritten by the next chunk
    }
    if (q == 0) {  // D[m][n] is the same for every n: lane (g, 0) holds columns 16g + j (d[j][0]) and 16g + 8 + j
#pragma unroll
        for (int j = 0; j < 8; j++) {
            red[warp][16 * g + j] = d[j][0];
            red[warp][16 * g + 8 + j] = d[j][2];
        }
    }
    __syncthreads();
    if (threadIdx.x < 128) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < WARPS; i++) s += red[i][threadIdx.x];
        const int c = col0 + threadIdx.x;
        y[(size_t)rank * ldw + c] = s * scale[c];
    }
}
#endif  // __CUDA_ARCH__ >= 890

// wsp_floor_sdasync: wsp_floor_sdread's reads (same grid, tiles, split, 16-byte pieces of the same kept rows, in the
// same order) issued as asynchronous copies into shared memory (cp.async, Ampere+), so the bytes a thread has in
// flight no longer live in registers: each thread owns a ring of WSP_D 16-byte slots of dynamic shared memory
// ([WSP_D][threads][16] bytes, launched with that much), keeps WSP_D - 1..WSP_D copies in flight (one commit group
// a copy), folds a slot once its group has landed and refills the slot with its copy WSP_D entries ahead. A slot is
// written and read by its own thread only, so no barrier guards it. What the reads take when a block's bytes in
// flight are set by shared memory instead of registers (benchmarks/probe_async.py).
#ifndef WSP_D
#define WSP_D 8
#endif
__device__ __forceinline__ void cp16(unsigned dst, const void* src) {
    asm volatile("cp.async.cg.shared.global" WSP_PF " [%0], [%1], 16;" :: "r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_wait_ring() { asm volatile("cp.async.wait_group %0;" :: "n"(WSP_D - 1) : "memory"); }

extern "C" __global__ void __launch_bounds__(WSP_THREADS) wsp_floor_sdasync(
    const int* __restrict__ lst, const int* __restrict__ starts, const int* __restrict__ tile,
    const unsigned char* __restrict__ w, int in, int ldw, int C, u32* __restrict__ y) {
    constexpr int TPR = WSP_SEG / 16, RL = WSP_THREADS / TPR;
    extern __shared__ __align__(16) unsigned char ring[];
    __shared__ int rows[WSP_KL];
    const int t = blockIdx.x / C, rank = blockIdx.x % C, p = tile[2 * t];
    const int lo = starts[p * (C + 1) + rank], hi = starts[p * (C + 1) + rank + 1];
    const unsigned char* wk = w + tile[2 * t + 1] + (threadIdx.x % TPR) * 16;
    const unsigned slot0 = (unsigned)__cvta_generic_to_shared(ring) + threadIdx.x * 16;
    auto slot = [&](int j) { return slot0 + (unsigned)(j % WSP_D) * (WSP_THREADS * 16); };
    u32 v = 0;
    for (int k0 = lo; k0 < hi; k0 += WSP_KL) {
        const int n = min(WSP_KL, hi - k0);
        for (int i = threadIdx.x; i < n; i += WSP_THREADS) rows[i] = lst[(size_t)p * in + k0 + i];
        __syncthreads();
        const int e0 = threadIdx.x / TPR, cnt = e0 < n ? (n - e0 + RL - 1) / RL : 0;  // this thread's entries
#pragma unroll
        for (int j = 0; j < WSP_D; j++) {
            if (j < cnt) cp16(slot(j), wk + (size_t)rows[e0 + j * RL] * ldw);
            cp_commit();  // empty groups too: group j is entry j's, whatever cnt
        }
        for (int j = 0; j < cnt; j++) {
            cp_wait_ring();  // at most WSP_D - 1 groups pending: entry j's has landed
            u32 a, b, c, d;
            asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(a), "=r"(b), "=r"(c), "=r"(d)
                         : "r"(slot(j)) : "memory");
            v ^= a ^ b ^ c ^ d;
            if (j + WSP_D < cnt) cp16(slot(j), wk + (size_t)rows[e0 + (j + WSP_D) * RL] * ldw);
            cp_commit();
        }
        asm volatile("cp.async.wait_all;" ::: "memory");
        __syncthreads();  // rows is rewritten by the next chunk
    }
    store_block_fold(v, y);
}

// wsp_floor_sdbulk: wsp_floor_sdread's reads (same grid, tiles, split, kept row pieces, order) through Hopper's bulk
// copies (cp.async.bulk: the TMA unit moves a whole WSP_SEG-byte piece per instruction, no register holds a byte in
// flight). The block's pieces go in stages of WSP_BSTAGE bytes into a ring of WSP_BD stages of dynamic shared memory
// (launched with WSP_BD * WSP_BSTAGE bytes); each stage's mbarrier counts its bytes in (expect_tx, complete_tx);
// warp 0 issues a stage's copies, one piece a lane; every thread folds a landed stage's words, the block syncs and
// warp 0 refills the stage WSP_BD stages ahead. What the reads take through the copy engine
// (benchmarks/probe_access.py --grid read=bulk; U there is WSP_BD).
#if __CUDA_ARCH__ >= 900
#ifndef WSP_BD
#define WSP_BD 4
#endif
#ifndef WSP_BSTAGE
#define WSP_BSTAGE 8192
#endif
static_assert(WSP_BSTAGE % WSP_SEG == 0, "whole pieces a stage");
__device__ __forceinline__ unsigned smem(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void bar_init(unsigned long long* b) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem(b)) : "memory");
}
__device__ __forceinline__ void bar_expect(unsigned long long* b, int bytes) {  // the one arrival, and its bytes
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(smem(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bar_wait(unsigned long long* b, unsigned parity) {
    u32 done = 0;
    while (!done)
        asm volatile("{ .reg .pred q;\n\tmbarrier.try_wait.parity.shared::cta.b64 q, [%1], %2;\n\tselp.u32 %0, 1, 0, q; }"
                     : "=r"(done) : "r"(smem(b)), "r"(parity) : "memory");
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned long long* b) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :: "r"(smem(dst)), "l"(src), "n"(WSP_SEG), "r"(smem(b)) : "memory");
}

extern "C" __global__ void __launch_bounds__(WSP_THREADS) wsp_floor_sdbulk(
    const int* __restrict__ lst, const int* __restrict__ starts, const int* __restrict__ tile,
    const unsigned char* __restrict__ w, int in, int ldw, int C, u32* __restrict__ y) {
    constexpr int PPS = WSP_BSTAGE / WSP_SEG;  // pieces a stage
    extern __shared__ __align__(128) unsigned char ring[];
    __shared__ int rows[WSP_KL];
    __shared__ __align__(8) unsigned long long bar[WSP_BD];
    const int t = blockIdx.x / C, rank = blockIdx.x % C, p = tile[2 * t];
    const int lo = starts[p * (C + 1) + rank], hi = starts[p * (C + 1) + rank + 1];
    const unsigned char* wk = w + tile[2 * t + 1];
    if (threadIdx.x < WSP_BD) bar_init(&bar[threadIdx.x]);
    __syncthreads();
    u32 v = 0, parity = 0;  // bit s: the phase stage s waits for next
    for (int k0 = lo; k0 < hi; k0 += WSP_KL) {
        const int n = min(WSP_KL, hi - k0), stages = (n + PPS - 1) / PPS;
        for (int i = threadIdx.x; i < n; i += WSP_THREADS) rows[i] = lst[(size_t)p * in + k0 + i];
        __syncthreads();
        auto fill = [&](int s) {  // warp 0: stage s of this chunk into ring slot s % WSP_BD
            const int slot = s % WSP_BD, e0 = s * PPS, m = min(PPS, n - e0);
            if (threadIdx.x == 0) bar_expect(&bar[slot], m * WSP_SEG);
            __syncwarp();
            for (int i = threadIdx.x; i < m; i += 32)
                bulk_copy(ring + slot * WSP_BSTAGE + i * WSP_SEG, wk + (size_t)rows[e0 + i] * ldw, &bar[slot]);
        };
        if (threadIdx.x < 32)
            for (int s = 0; s < min(WSP_BD, stages); ++s) fill(s);
        for (int s = 0; s < stages; ++s) {
            const int slot = s % WSP_BD, words = min(PPS, n - s * PPS) * WSP_SEG / 4;
            bar_wait(&bar[slot], (parity >> slot) & 1u);
            parity ^= 1u << slot;
            const u32* got = reinterpret_cast<const u32*>(ring + slot * WSP_BSTAGE);
            for (int i = threadIdx.x; i < words; i += WSP_THREADS) v ^= got[i];
            __syncthreads();  // the whole block is done with the slot (and, last stage, with rows)
            if (threadIdx.x < 32 && s + WSP_BD < stages) fill(s + WSP_BD);
        }
    }
    store_block_fold(v, y);
}
#endif  // __CUDA_ARCH__ >= 900
