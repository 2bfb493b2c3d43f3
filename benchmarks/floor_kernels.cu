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
        asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
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
                asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
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
    __shared__ u32 red[WSP_THREADS / 32];
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
                    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                                 : "=r"(a[u][0]), "=r"(a[u][1]), "=r"(a[u][2]), "=r"(a[u][3])
                                 : "l"(wk + (size_t)rows[e + u * RL] * ldw));
            }
#pragma unroll
            for (int u = 0; u < WSP_U; ++u) v ^= a[u][0] ^ a[u][1] ^ a[u][2] ^ a[u][3];
        }
        __syncthreads();  // rows is rewritten by the next chunk
    }
    for (int o = 16; o > 0; o /= 2) v ^= __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < WSP_THREADS / 32 ? red[threadIdx.x] : 0;
        for (int o = 16; o > 0; o /= 2) v ^= __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0) y[blockIdx.x] = v;
    }
}
