//! Shader validation without a GPU: every composed shader parses and validates with naga, its
//! uniform struct has the layout of its Rust twin, its state bindings carry the names the host
//! uses, and every override the host sets exists.

use std::mem::offset_of;

use fusedopt::kernels::{ENTRY_POINT, FIRST_STATE_BINDING, Shader};
use fusedopt::optim::{AdadeltaScalars, AdagradScalars, AdamScalars, RmspropScalars, SgdScalars};
use fusedopt::{Adadelta, Adagrad, Adam, Optimizer, Rmsprop, Sgd};
use wgpu::naga;

fn parse(shader: Shader) -> naga::Module {
    let source = shader.source();
    let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
        panic!(
            "{} does not parse:\n{}",
            shader.name(),
            e.emit_to_string(&source)
        )
    });
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| {
        panic!(
            "{} does not validate:\n{}",
            shader.name(),
            e.emit_to_string(&source)
        )
    });
    module
}

/// The configuration of each shader with every optional state tensor on.
fn fullest(shader: Shader) -> Optimizer {
    match shader {
        Shader::Sgd => Sgd {
            momentum: 0.9,
            nesterov: true,
            ..Sgd::default()
        }
        .into(),
        Shader::Adagrad => Adagrad::default().into(),
        Shader::Rmsprop => Rmsprop {
            centered: true,
            momentum: 0.9,
            ..Rmsprop::default()
        }
        .into(),
        Shader::Adadelta => Adadelta::default().into(),
        Shader::Adam => Adam {
            amsgrad: true,
            ..Adam::default()
        }
        .into(),
    }
}

/// Named fields of each Rust uniform twin with their offsets (padding is private and unnamed
/// on the Rust side, `_pad*` in WGSL).
fn rust_fields(shader: Shader) -> Vec<(&'static str, usize)> {
    macro_rules! fields {
        ($t:ty: $($f:ident),*) => { vec![$((stringify!($f), offset_of!($t, $f))),*] };
    }
    match shader {
        Shader::Sgd => {
            fields!(SgdScalars: lr, weight_decay, momentum, one_minus_dampening, first_step)
        }
        Shader::Adagrad => fields!(AdagradScalars: clr, eps, weight_decay),
        Shader::Rmsprop => {
            fields!(RmspropScalars: lr, alpha, one_minus_alpha, lerp_complement, eps, weight_decay, momentum)
        }
        Shader::Adadelta => fields!(AdadeltaScalars: lr, rho, one_minus_rho, eps, weight_decay),
        Shader::Adam => {
            fields!(AdamScalars: decay_factor, weight_decay, one_minus_beta1, lerp_complement, beta2, one_minus_beta2, step_size, bias_correction2_sqrt, bias_correction2, eps)
        }
    }
}

#[test]
fn every_shader_validates_with_naga() {
    for shader in Shader::ALL {
        let module = parse(shader);
        let entry = module.entry_points.iter().find(|e| e.name == ENTRY_POINT);
        assert!(
            entry.is_some_and(|e| e.stage == naga::ShaderStage::Compute),
            "{}: compute entry point `{ENTRY_POINT}`",
            shader.name()
        );
    }
}

#[test]
fn uniform_structs_match_their_rust_twins() {
    for shader in Shader::ALL {
        let module = parse(shader);
        let (struct_name, rust_size) = shader.uniform_struct();
        let (members, span) = module
            .types
            .iter()
            .find_map(|(_, ty)| match &ty.inner {
                naga::TypeInner::Struct { members, span }
                    if ty.name.as_deref() == Some(struct_name) =>
                {
                    Some((members.clone(), *span))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{}: struct {struct_name} not found", shader.name()));
        assert_eq!(
            span as usize, rust_size,
            "{struct_name}: WGSL size vs size_of"
        );
        let wgsl: Vec<(String, usize)> = members
            .iter()
            .filter_map(|m| Some((m.name.clone()?, m.offset as usize)))
            .filter(|(n, _)| !n.starts_with('_'))
            .collect();
        let rust: Vec<(String, usize)> = rust_fields(shader)
            .into_iter()
            .map(|(n, o)| (n.to_string(), o))
            .collect();
        assert_eq!(wgsl, rust, "{struct_name}: field names and offsets");
        // The uniform at binding 0 has this type.
        let uniform = module
            .global_variables
            .iter()
            .find(|(_, v)| {
                v.binding
                    .as_ref()
                    .is_some_and(|b| b.group == 0 && b.binding == 0)
            })
            .map(|(_, v)| v)
            .expect("binding 0");
        assert_eq!(
            uniform.space,
            naga::AddressSpace::Uniform,
            "{}: binding 0 is a uniform",
            shader.name()
        );
        assert_eq!(
            module.types[uniform.ty].name.as_deref(),
            Some(struct_name),
            "binding 0 type"
        );
    }
}

#[test]
fn state_bindings_carry_the_hosts_names() {
    for shader in Shader::ALL {
        let module = parse(shader);
        let mut bound: Vec<(u32, String)> = module
            .global_variables
            .iter()
            .filter_map(|(_, v)| {
                let b = v.binding.as_ref()?;
                (b.binding >= FIRST_STATE_BINDING)
                    .then(|| (b.binding, v.name.clone().unwrap_or_default()))
            })
            .collect();
        bound.sort();
        let wgsl: Vec<&str> = bound.iter().map(|(_, n)| n.as_str()).collect();
        let config = fullest(shader);
        assert_eq!(
            wgsl,
            config.state_names(),
            "{}: state bindings in order",
            shader.name()
        );
        assert_eq!(
            wgsl.len(),
            shader.state_bindings(),
            "{}: binding count",
            shader.name()
        );
        let numbers: Vec<u32> = bound.iter().map(|(b, _)| *b).collect();
        let expected: Vec<u32> =
            (FIRST_STATE_BINDING..FIRST_STATE_BINDING + wgsl.len() as u32).collect();
        assert_eq!(numbers, expected, "{}: contiguous bindings", shader.name());
    }
}

#[test]
fn every_override_the_host_sets_exists() {
    for name in Optimizer::NAMES {
        for config in fusedopt::validate::variants(name).unwrap() {
            let shader = config.shader();
            let module = parse(shader);
            let declared: Vec<String> = module
                .overrides
                .iter()
                .filter_map(|(_, o)| o.name.clone())
                .collect();
            assert!(
                declared.contains(&"WORKGROUP_SIZE".to_string()),
                "WORKGROUP_SIZE"
            );
            for key in fusedopt::kernels::override_names(&config) {
                assert!(
                    declared.iter().any(|d| d == key),
                    "{}: override {key} not declared",
                    shader.name()
                );
            }
        }
    }
}

#[test]
fn copy_kernel_validates_with_the_parameter_and_gradient_bindings_only() {
    let source = fusedopt::kernels::copy_source();
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("copy does not parse:\n{}", e.emit_to_string(&source)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("copy does not validate:\n{}", e.emit_to_string(&source)));
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
