//! Shader validation without a GPU: every kernel any optimizer runs parses and validates with
//! naga, its uniform struct has the layout of its Rust twin, it binds the host's layout and
//! names its state as the host does, and every override the host sets exists. The kernels come from the
//! optimizers' own descriptions, so a new optimizer is checked here without a line changed.

use fusedopt::Precision;
use fusedopt::kernels::{
    self, CHUNK_BINDING, ENTRY_POINT, LaunchShape, MASTER_BINDING, STEP_BITS_BINDING,
    UNIFORM_BINDING,
};
use fusedopt::optim::{KernelSpec, MAX_STATE};
use fusedopt::testing::variants;
use fusedopt::{Optimizer, SparseOptimizer};
use wgpu::naga;

fn parse(name: &str, source: &str) -> naga::Module {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(source)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name} does not validate:\n{}", e.emit_to_string(source)));
    module
}

/// Every option set of every optimizer, with the kernel it runs.
fn configurations() -> Vec<Optimizer> {
    Optimizer::NAMES
        .iter()
        .flat_map(|name| variants(name).expect("a registered name"))
        .collect()
}

/// Each kernel once, with the configuration of it that keeps the most state.
fn kernels() -> Vec<(&'static KernelSpec, Optimizer)> {
    let mut out: Vec<(&'static KernelSpec, Optimizer)> = Vec::new();
    for config in configurations() {
        let spec = config.kernel();
        match out.iter_mut().find(|(s, _)| std::ptr::eq(*s, spec)) {
            Some((_, fullest)) if config.state_names().len() > fullest.state_names().len() => {
                *fullest = config;
            }
            Some(_) => {}
            None => out.push((spec, config)),
        }
    }
    out
}

#[test]
fn every_optimizer_name_has_a_kernel_and_all_are_checked() {
    let names: Vec<&str> = kernels().iter().map(|(s, _)| s.name).collect();
    assert!(
        names.len() >= 5,
        "one kernel per optimizer family: {names:?}"
    );
    for name in Optimizer::NAMES {
        let kernel = Optimizer::default_for(name).unwrap().kernel().name;
        assert!(
            names.contains(&kernel),
            "{name} runs {kernel}, which is checked"
        );
    }
}

#[test]
fn every_shader_validates_with_naga() {
    for (spec, _) in kernels() {
        let module = parse(spec.name, &kernels::source(spec));
        let entry = module.entry_points.iter().find(|e| e.name == ENTRY_POINT);
        assert!(
            entry.is_some_and(|e| e.stage == naga::ShaderStage::Compute),
            "{}: compute entry point `{ENTRY_POINT}`",
            spec.name
        );
    }
}

#[test]
fn uniform_structs_match_their_rust_twins() {
    for (spec, _) in kernels() {
        check_uniform(spec, &parse(spec.name, &kernels::source(spec)));
    }
}

/// The uniform at binding 0 of `module` has the size, field names and offsets of `spec`'s
/// Rust twin.
fn check_uniform(spec: &KernelSpec, module: &naga::Module) {
    let uniform = module
        .global_variables
        .iter()
        .find(|(_, v)| {
            v.binding
                .as_ref()
                .is_some_and(|b| b.group == 0 && b.binding == UNIFORM_BINDING)
        })
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{}: binding {UNIFORM_BINDING}", spec.name));
    assert_eq!(
        uniform.space,
        naga::AddressSpace::Uniform,
        "{}: binding {UNIFORM_BINDING} is a uniform",
        spec.name
    );
    let naga::TypeInner::Struct { members, span } = &module.types[uniform.ty].inner else {
        panic!("{}: the uniform is a struct", spec.name);
    };
    assert_eq!(
        *span as usize, spec.uniform.size,
        "{}: WGSL size vs size_of",
        spec.name
    );
    let wgsl: Vec<(&str, usize)> = members
        .iter()
        .filter_map(|m| Some((m.name.as_deref()?, m.offset as usize)))
        .filter(|(n, _)| !n.starts_with('_'))
        .collect();
    assert_eq!(
        wgsl,
        spec.uniform.fields.to_vec(),
        "{}: field names and offsets",
        spec.name
    );
}

#[test]
fn every_kernel_binds_the_hosts_layout_and_names_its_state() {
    for (spec, fullest) in kernels() {
        let module = parse(spec.name, &kernels::source(spec));
        let mut bound: Vec<(u32, naga::AddressSpace)> = module
            .global_variables
            .iter()
            .filter_map(|(_, v)| Some((v.binding.as_ref()?.binding, v.space)))
            .collect();
        bound.sort_by_key(|(b, _)| *b);
        let numbers: Vec<u32> = bound.iter().map(|(b, _)| *b).collect();
        assert_eq!(
            numbers,
            (0..=MASTER_BINDING).collect::<Vec<_>>(),
            "{}",
            spec.name
        );
        for (binding, space) in bound {
            let uniform = [UNIFORM_BINDING, CHUNK_BINDING, STEP_BITS_BINDING].contains(&binding);
            assert_eq!(
                matches!(space, naga::AddressSpace::Uniform),
                uniform,
                "{}: binding {binding} is {space:?}",
                spec.name
            );
        }
        // The update reads its state as `s0`.. in the spec's order, and says which is which.
        for (k, name) in spec.state.iter().enumerate() {
            assert!(
                spec.source.contains(&format!("s{k} `{name}`")),
                "{}: the update names s{k} `{name}`",
                spec.name
            );
        }
        assert!(spec.state.len() <= MAX_STATE, "{}", spec.name);
        assert_eq!(
            fullest.state_names(),
            spec.state,
            "{}: some option set uses every state binding",
            spec.name
        );
    }
}

#[test]
fn every_override_the_host_sets_exists() {
    for config in configurations() {
        let spec = config.kernel();
        let module = parse(spec.name, &kernels::source(spec));
        let declared: Vec<String> = module
            .overrides
            .iter()
            .filter_map(|(_, o)| o.name.clone())
            .collect();
        let launch = LaunchShape::default().overrides();
        let storage = Precision::ALL
            .into_iter()
            .flat_map(|p| kernels::precision_overrides(p, &[true; MAX_STATE], true));
        for (key, _) in config.overrides().into_iter().chain(launch).chain(storage) {
            assert!(
                declared.iter().any(|d| d == key),
                "{}: override {key} not declared",
                spec.name
            );
        }
    }
}

#[test]
fn copy_kernel_validates_with_the_parameter_and_gradient_bindings_only() {
    let module = parse("copy", &kernels::copy_source());
    assert!(
        module.entry_points.iter().any(|e| e.name == ENTRY_POINT),
        "copy has the entry point {ENTRY_POINT}"
    );
    let mut bindings: Vec<u32> = module
        .global_variables
        .iter()
        .filter_map(|(_, v)| v.binding.as_ref().map(|b| b.binding))
        .collect();
    bindings.sort_unstable();
    assert_eq!(
        bindings,
        [1, 2],
        "copy binds the destination (1) and source (2)"
    );
}

#[test]
fn guard_kernel_validates_and_declares_its_entry_points_bindings_and_overrides() {
    use fusedopt::kernels::GuardStage;
    let module = parse("guard", &kernels::guard_source());
    for stage in [
        GuardStage::Adopt,
        GuardStage::Check,
        GuardStage::Finish,
        GuardStage::Choose,
    ] {
        assert!(
            module.entry_points.iter().any(|e| e.name == stage.entry()),
            "guard has the entry point {}",
            stage.entry()
        );
        for (key, _) in stage.overrides(Some(fusedopt::HalfFormat::F16)) {
            assert!(
                module
                    .overrides
                    .iter()
                    .any(|(_, o)| o.name.as_deref() == Some(key)),
                "override {key} not declared"
            );
        }
    }
    let mut bindings: Vec<u32> = module
        .global_variables
        .iter()
        .filter_map(|(_, v)| v.binding.as_ref().map(|b| b.binding))
        .collect();
    bindings.sort_unstable();
    assert_eq!(
        bindings,
        [
            kernels::GUARD_STATE_BINDING,
            kernels::GUARD_SETTINGS_BINDING,
            kernels::GUARD_PARTIALS_BINDING,
            kernels::GUARD_GRADS_BINDING,
            kernels::GUARD_RANGE_BINDING,
            kernels::GUARD_COUNTER_BINDING,
            kernels::GUARD_CANDIDATES_BINDING,
            kernels::GUARD_SCALARS_BINDING,
            kernels::GUARD_CALLER_SCALE_BINDING,
            kernels::GUARD_CALLER_FOUND_BINDING,
        ]
    );
    // The block the CPU mirror sums is the kernel's.
    let source = kernels::GUARD_WGSL;
    for (name, value) in [
        ("LANES", fusedopt::optim::GUARD_LANES),
        ("PER_LANE", fusedopt::optim::GUARD_PER_LANE),
        ("BLOCK", fusedopt::optim::GUARD_BLOCK),
    ] {
        assert!(
            source.contains(&format!("const {name}: u32 = {value}u;")),
            "{name} = {value} in guard.wgsl"
        );
    }
    assert!(source.contains(&format!(
        "const STEP_BITS_WORD: u32 = {}u;",
        kernels::STEP_BITS_OFFSET / 4
    )));
}

#[test]
fn every_sparse_kernel_validates_with_its_passes_uniform_and_overrides() {
    for config in SparseOptimizer::variants() {
        let spec = config.kernel();
        let module = parse(spec.name, &kernels::sparse_source(spec));
        for entry in ["make_keys", "sort", "row_sums", ENTRY_POINT] {
            assert!(
                module.entry_points.iter().any(|e| e.name == entry),
                "sparse {}: entry point {entry}",
                spec.name
            );
        }
        // The row sums' lanes fix the order of the sum the CPU mirror repeats.
        let row_sums = module.entry_points.iter().find(|e| e.name == "row_sums");
        assert_eq!(
            row_sums.map(|e| e.workgroup_size),
            Some([fusedopt::reference::ROW_SUM_LANES as u32, 1, 1]),
            "sparse {}: row_sums lanes",
            spec.name
        );
        check_uniform(spec, &module);
        let declared: Vec<String> = module
            .overrides
            .iter()
            .filter_map(|(_, o)| o.name.clone())
            .collect();
        let launch = LaunchShape::default().overrides();
        for (key, _) in config.overrides().into_iter().chain(launch) {
            assert!(
                declared.iter().any(|d| d == key),
                "sparse {}: override {key} not declared",
                spec.name
            );
        }
    }
}
