// Test-only kernel for tests/host.rs: out[i] = i + 1 for every i < params.n, on a 2-D grid of
// workgroups as `neurokernels::gpu::grid` lays it out (linear group = wid.x + wid.y * nwg.x).

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn fill(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.x + wid.y * nwg.x;
    let i = group * 64u + lid;
    if (i >= params.n) {
        return;
    }
    out[i] = i + 1u;
}
