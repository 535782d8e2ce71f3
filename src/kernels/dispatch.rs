//! Dispatch over a range of any length: one bind group per chunk of at most the largest
//! storage binding, two-dimensional workgroup grids past the per-dimension limit. Written once
//! for every kernel (optimizers and the copy roofline).

use super::{Kernel, WORKGROUP_SIZE};
use crate::error::{Error, Result};

/// Workgroup counts `(x, y)` covering `len` elements with at most `max_per_dimension` groups
/// along x, as `element_index` in `common.wgsl` expects. A grid that does not fit the device,
/// or whose `u32` invocation index would wrap past 2^32, is an error, never truncated.
pub fn workgroups(len: u64, max_per_dimension: u32) -> Result<(u32, u32)> {
    let groups = len.div_ceil(u64::from(WORKGROUP_SIZE));
    let x = groups.min(u64::from(max_per_dimension)).max(1);
    let y = groups.div_ceil(x).max(1);
    let indexable = x * y * u64::from(WORKGROUP_SIZE) <= 1 << 32;
    match (u32::try_from(x), u32::try_from(y)) {
        (Ok(x), Ok(y)) if y <= max_per_dimension && indexable => Ok((x, y)),
        _ => Err(Error::LimitExceeded {
            what: format!("a dispatch over {len} elements"),
            requested: groups,
            limit: (u64::from(max_per_dimension) * u64::from(max_per_dimension))
                .min((1 << 32) / u64::from(WORKGROUP_SIZE)),
            limit_name: "max_compute_workgroups_per_dimension (squared), and 2^32 invocations",
        }),
    }
}

/// How ranges are cut into dispatches on one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grid {
    /// Most elements bound at once (the largest storage binding, aligned).
    pub(crate) chunk_elements: u64,
    /// `max_compute_workgroups_per_dimension`.
    pub(crate) max_per_dimension: u32,
}

/// One dispatch: a bind group over one chunk of every tensor, and its workgroup counts.
#[derive(Debug)]
struct Dispatch {
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

/// The dispatches of one kernel over `len` elements, built once and recorded at every step.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    dispatches: Vec<Dispatch>,
}

impl Chunked {
    /// Appends the dispatches over `len` elements in chunks of at most `chunk_elements`;
    /// `entries(start, n)` binds elements `start..start + n` of every tensor.
    pub(crate) fn extend<'a>(
        &mut self,
        device: &wgpu::Device,
        kernel: &Kernel,
        label: &str,
        len: u64,
        grid: Grid,
        mut entries: impl FnMut(u64, u64) -> Vec<wgpu::BindGroupEntry<'a>>,
    ) -> Result<()> {
        if grid.chunk_elements == 0 {
            return Err(Error::LimitExceeded {
                what: format!("a dispatch over {len} elements"),
                requested: 4,
                limit: 0,
                limit_name: "max_storage_buffer_binding_size (aligned)",
            });
        }
        let mut start = 0;
        while start < len {
            let n = (len - start).min(grid.chunk_elements);
            let groups = workgroups(n, grid.max_per_dimension)?;
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&format!("{label}@{start}")),
                layout: &kernel.layout,
                entries: &entries(start, n),
            });
            self.dispatches.push(Dispatch { bind_group, groups });
            start += n;
        }
        Ok(())
    }

    /// Records every dispatch into `pass` (its pipeline already set).
    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for Dispatch { bind_group, groups } in &self.dispatches {
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, 1);
        }
    }

    /// Number of dispatches.
    pub(crate) fn len(&self) -> usize {
        self.dispatches.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workgroups_cover_every_element_in_two_dimensions() {
        for (len, max) in [
            (1, 65535),
            (256, 65535),
            (257, 65535),
            (300_000_000, 65535),
            (1 << 31, 65535),
            (10_000, 7),
        ] {
            let (x, y) = workgroups(len, max).unwrap();
            assert!(x <= max && y <= max, "within the limit for {len}");
            let threads = u64::from(x) * u64::from(y) * u64::from(WORKGROUP_SIZE);
            assert!(threads >= len, "{len} elements covered by {x}x{y} groups");
            assert!(
                threads < len + u64::from(x) * u64::from(WORKGROUP_SIZE),
                "at most one partial row for {len}"
            );
        }
    }

    #[test]
    fn counts_that_do_not_fit_are_errors_not_truncated() {
        // 2^40 elements need 2^32 workgroups: more than 65535 x 65535.
        assert!(workgroups(1 << 40, 65535).is_err());
        // 2^32 - 64 elements fit a 65535 x 257 grid, whose 4.31 G invocations would wrap a
        // u32 index.
        assert!(workgroups((1 << 32) - 64, 65535).is_err());
        assert!(workgroups(10_000, 2).is_err(), "40 groups in a 2 x 2 grid");
    }
}
