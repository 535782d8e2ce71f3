//! Dispatch over a range of any length: one bind group per chunk of at most the largest
//! storage binding, two-dimensional workgroup grids past the per-dimension limit. Written once
//! for every kernel (optimizers and the copy roofline).

use super::Kernel;
use crate::error::{Error, Result};

/// How a kernel's invocations cover a range: threads per workgroup, elements per invocation,
/// and optionally a cap on workgroups per dispatch (then each invocation strides over the
/// range). Tuning it never changes a number: every element gets the same update in the same
/// operation order, whichever invocation runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LaunchShape {
    /// Threads per workgroup (`WORKGROUP_SIZE` in `common.wgsl`).
    pub workgroup_size: u32,
    /// Elements one invocation updates per round, `workgroup_size` apart
    /// (`ELEMENTS_PER_INVOCATION`), at most [`LaunchShape::MAX_ELEMENTS_PER_INVOCATION`].
    pub elements_per_invocation: u32,
    /// Most workgroups per dispatch; `None` launches enough to cover the range in one round.
    /// Raised where the range would otherwise take more than [`LaunchShape::MAX_ROUNDS`].
    pub max_workgroups: Option<u32>,
}

impl Default for LaunchShape {
    /// 256 threads, one element each, one round.
    fn default() -> Self {
        Self {
            workgroup_size: 256,
            elements_per_invocation: 1,
            max_workgroups: None,
        }
    }
}

impl LaunchShape {
    /// Most elements per invocation: the loop over them is unrolled by the driver.
    pub const MAX_ELEMENTS_PER_INVOCATION: u32 = 16;

    /// Most rounds of the grid-stride loop: a cap on workgroups that would need more is raised
    /// to the fewest that need no more. Mesa's software drivers (lavapipe, llvmpipe 22.3, as
    /// measured here) leave a shader loop after 65,535 iterations, silently skipping the rest.
    pub const MAX_ROUNDS: u64 = 1 << 15;

    /// Elements a workgroup covers per round.
    pub fn elements_per_workgroup(&self) -> u64 {
        u64::from(self.workgroup_size) * u64::from(self.elements_per_invocation)
    }

    /// The override constants of `common.wgsl` this shape sets.
    pub fn overrides(&self) -> [(&'static str, f64); 2] {
        [
            ("WORKGROUP_SIZE", f64::from(self.workgroup_size)),
            (
                "ELEMENTS_PER_INVOCATION",
                f64::from(self.elements_per_invocation),
            ),
        ]
    }

    /// Fails unless the shape can run on a device with `limits`.
    pub fn check(&self, limits: &wgpu::Limits) -> Result<()> {
        let most_threads = limits
            .max_compute_invocations_per_workgroup
            .min(limits.max_compute_workgroup_size_x);
        let fault = if !(1..=most_threads).contains(&self.workgroup_size) {
            Some(format!(
                "{} threads per workgroup: the device runs 1 to {most_threads}",
                self.workgroup_size
            ))
        } else if !(1..=Self::MAX_ELEMENTS_PER_INVOCATION).contains(&self.elements_per_invocation) {
            Some(format!(
                "{} elements per invocation: 1 to {}",
                self.elements_per_invocation,
                Self::MAX_ELEMENTS_PER_INVOCATION
            ))
        } else if self.max_workgroups == Some(0) {
            Some("at most 0 workgroups: a dispatch needs one".into())
        } else {
            None
        };
        match fault {
            Some(message) => Err(Error::InvalidSetting {
                what: "launch shape".into(),
                message,
            }),
            None => Ok(()),
        }
    }
}

/// Workgroup counts `(x, y)` covering `len` elements with `shape`, at most `max_per_dimension`
/// groups along x, as `step` in `common.wgsl` numbers them. The grid's elements per round stay
/// below 2^32, so the kernel's `u32` indices never wrap; a grid that cannot keep to that or to
/// the device's limit is an error, never truncated.
pub fn workgroups(len: u64, shape: LaunchShape, max_per_dimension: u32) -> Result<(u32, u32)> {
    let width = shape.elements_per_workgroup().max(1);
    let needed = len.div_ceil(width).max(1);
    let most = u64::from(max_per_dimension).max(1);
    let (x, y) = match shape.max_workgroups {
        // Capped: as many workgroups as the cap allows, never more (the rows are then full,
        // and the invocations stride over the rest).
        Some(cap) if u64::from(cap) < needed => {
            let cap = u64::from(cap).max(needed.div_ceil(LaunchShape::MAX_ROUNDS));
            let y = cap.div_ceil(most);
            (cap / y, y)
        }
        // Covering: enough rows of at most `most` workgroups, the last one maybe partial.
        _ => {
            let x = needed.min(most);
            (x, needed.div_ceil(x))
        }
    };
    let groups = x * y;
    let indexable = x * y * width < 1 << 32;
    match (u32::try_from(x), u32::try_from(y)) {
        (Ok(x), Ok(y)) if y <= max_per_dimension && indexable => Ok((x, y)),
        _ => Err(Error::LimitExceeded {
            what: format!("a dispatch over {len} elements"),
            requested: groups,
            limit: (u64::from(max_per_dimension) * u64::from(max_per_dimension))
                .min(((1 << 32) - 1) / width),
            limit_name: "max_compute_workgroups_per_dimension (squared), and 2^32 elements per round",
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
    /// How the kernel's invocations cover a chunk.
    pub(crate) shape: LaunchShape,
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
            let groups = workgroups(n, grid.shape, grid.max_per_dimension)?;
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

    /// Elements the grid `(x, y)` of `shape` covers in one round.
    fn covered(x: u32, y: u32, shape: LaunchShape) -> u64 {
        u64::from(x) * u64::from(y) * shape.elements_per_workgroup()
    }

    #[test]
    fn workgroups_cover_every_element_in_two_dimensions() {
        for shape in [
            LaunchShape::default(),
            shape(64, 4, None),
            shape(1024, 16, None),
        ] {
            for (len, max) in [
                (1, 65535),
                (256, 65535),
                (257, 65535),
                (300_000_000, 65535),
                (1 << 31, 65535),
                (10_000, 7),
            ] {
                let (x, y) = workgroups(len, shape, max).unwrap();
                assert!(x <= max && y <= max, "within the limit for {len}");
                let covered = covered(x, y, shape);
                assert!(covered >= len, "{len} elements covered by {x}x{y} groups");
                assert!(
                    covered < len + u64::from(x) * shape.elements_per_workgroup(),
                    "at most one partial row for {len}"
                );
                assert!(covered < 1 << 32, "indices stay in u32");
            }
        }
    }

    #[test]
    fn a_capped_grid_strides_and_stays_within_its_cap() {
        let capped = shape(128, 2, Some(1000));
        assert_eq!(workgroups(1 << 31, capped, 65535).unwrap(), (1000, 1));
        assert_eq!(
            workgroups(300, capped, 65535).unwrap(),
            (2, 1),
            "fewer needed"
        );
        assert_eq!(
            workgroups(1 << 31, shape(128, 2, Some(100_000)), 65535).unwrap(),
            (50_000, 2),
            "two full rows, within the cap"
        );
        let (x, y) = workgroups(1 << 31, shape(128, 2, Some(131_069)), 65535).unwrap();
        assert!(x * y <= 131_069 && x * y > 131_069 - y, "{x}x{y}");
        // One invocation would need 200,001 rounds: raised to 7 workgroups of at most 2^15.
        assert_eq!(
            workgroups(200_001, shape(1, 1, Some(1)), 65535).unwrap(),
            (7, 1)
        );
    }

    #[test]
    fn counts_that_do_not_fit_are_errors_not_truncated() {
        let shape = LaunchShape::default();
        // 2^40 elements need 2^32 workgroups: more than 65535 x 65535.
        assert!(workgroups(1 << 40, shape, 65535).is_err());
        // 2^32 - 64 elements fit a 65535 x 257 grid, whose 4.31 G invocations would wrap a
        // u32 index.
        assert!(workgroups((1 << 32) - 64, shape, 65535).is_err());
        assert!(
            workgroups(10_000, shape, 2).is_err(),
            "40 groups in a 2 x 2 grid"
        );
    }

    /// A launch shape of `workgroup_size` threads, `elements` per invocation, at most `most`
    /// workgroups.
    fn shape(workgroup_size: u32, elements: u32, most: Option<u32>) -> LaunchShape {
        LaunchShape {
            workgroup_size,
            elements_per_invocation: elements,
            max_workgroups: most,
        }
    }

    #[test]
    fn shapes_a_device_cannot_run_are_refused() {
        let limits = wgpu::Limits::default();
        assert!(LaunchShape::default().check(&limits).is_ok());
        for shape in [
            shape(0, 1, None),
            shape(4096, 1, None),
            shape(256, 0, None),
            shape(256, 17, None),
            shape(256, 1, Some(0)),
        ] {
            assert!(
                matches!(shape.check(&limits), Err(Error::InvalidSetting { .. })),
                "{shape:?}"
            );
        }
    }
}
