// The floor of an activation-sparse decode GEMV (benchmarks/bench_floor.py): the least a call pays besides
// streaming its kept weight bytes. Two entry points with one parameter list, launched like the package's kernels
// (kernels.launch: inputs, int32 extras, outputs), so CUDA graphs capture them exactly like a real call.
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
// No headers: NVRTC compiles this without any include path.

#ifndef WSP_SEG
#define WSP_SEG 256  // bytes of weight row each block reads: one 128-column bf16 (256-column 1-byte) segment
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
