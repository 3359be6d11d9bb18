"""Privacy mutations: deliberate privacy bugs, applied one at a time, that the privacy tests must catch.

Each :class:`Mutation` is a list of text edits to one dpgd module (``old`` must occur
exactly once in the module's source). :func:`apply` re-executes the edited top-level
function, method or assignment in the module's namespace when the test process starts
(``tests/conftest.py`` reads ``DPGD_PRIVACY_MUTATION``) and rebinds every dpgd module
that imported the old object (under any name), so the whole package runs the bug. The
package on disk is never changed.

``scripts/mutate_privacy.py`` runs the privacy test subset (``pytest -m privacy``) once
per mutation and fails if any mutation survives. ``killers`` name the tests expected to
catch a mutation; the script runs them first (a fast path), then the whole subset if
they pass, so the killing test it reports is whichever test really failed.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

ENV = "DPGD_PRIVACY_MUTATION"


@dataclass(frozen=True)
class Mutation:
    """One privacy bug: ``(old, new)`` text edits to ``module``, and the tests meant to catch it."""

    name: str
    module: str
    edits: tuple[tuple[str, str], ...]
    killers: tuple[str, ...] = ()
    # True: one of the mutations the slow CI test runs (every kind of bug once, ~2-3 min).
    subset: bool = False


def _m(name: str, module: str, *edits: tuple[str, str], killers: tuple[str, ...] = (), subset: bool = False):
    return Mutation(name, module, tuple(edits), killers, subset)


NS = "tests/test_noise_scale.py::"
PS = "tests/test_poisson_sampling.py::"
RC = "tests/test_release_contents.py::"
SR = "tests/test_secret_resume.py::"
GEN = "tests/test_generators.py::"
# The two class-sum releases of dpgd.matching.release draw noise with the same line; the
# line before tells them apart.
_NOISE_LINE = "sums.add_(noise.to(sums.device), alpha=noise_multiplier * clip_norm)"
_NOISE_DRAW = ("noise = torch.randn(sums.shape, generator=noise_generator, device=noise_generator.device, "
               "dtype=sums.dtype)")
ITERATION_NOISE = f"del clipped\n    {_NOISE_DRAW}\n    {_NOISE_LINE}"
ONCE_NOISE = f'found no train records.")\n    {_NOISE_DRAW}\n    {_NOISE_LINE}'

MUTATIONS: tuple[Mutation, ...] = (
    # --- noise x0.5 in each mechanism (the ledger keeps the planned multiplier) ---------------
    _m("counts: noise x0.5", "dpgd.counts",
       ("alpha=float(noise_multiplier))", "alpha=0.5 * float(noise_multiplier))"),
       killers=(NS + "test_count_noise_std_is_sigma_times_one",)),
    _m("dp_merf: noise x0.5", "dpgd.generators.dp_merf",
       ("* (noise_multiplier * SENSITIVITY)", "* (0.5 * noise_multiplier * SENSITIVITY)"),
       killers=(NS + "test_dp_merf_noise_std_is_sigma_times_one",)),
    _m("dp_sgd VAE: noise x0.5 (sigma recorded as planned)", "dpgd.generators.dp_sgd",
       ("noise_multiplier=sigma,", "noise_multiplier=0.5 * sigma,"),
       ("log.record(opt.noise_multiplier)", "log.record(2 * opt.noise_multiplier)"),
       killers=(NS + "test_dp_sgd_vae_noise_std_is_sigma_times_clip",)),
    _m("dp_sgd VAE: no noise (sigma recorded as planned)", "dpgd.generators.dp_sgd",
       ("noise_multiplier=sigma,", "noise_multiplier=0.0,"),
       ("log.record(opt.noise_multiplier) if opt.noise_multiplier > 0 else None", "log.record(sigma)"),
       killers=(GEN + "test_dp_sgd_fits_and_records_its_mechanism",)),
    _m("pe: vote noise x0.5", "dpgd.generators.pe",
       ("* (noise_multiplier * SENSITIVITY)", "* (0.5 * noise_multiplier * SENSITIVITY)"),
       killers=(NS + "test_pe_vote_noise_std_is_sigma_times_one",)),
    _m("expert lda: noise x0.5", "dpgd.expert",
       ("* (noise_multiplier * 1.0)", "* (0.5 * noise_multiplier * 1.0)"),
       killers=(NS + "test_lda_feature_sum_noise_std_is_sigma_times_one",)),
    _m("expert lda: embeddings not clipped (sensitivity unbounded)", "dpgd.expert",
       ("norms = embedded.norm(dim=1, keepdim=True).clamp(min=1.0)", "norms = torch.ones(embedded.shape[0], 1)"),
       killers=(NS + "test_one_record_moves_an_lda_class_sum_by_at_most_one",)),
    _m("expert DP-SGD: noise x0.5 (sigma recorded as planned)", "dpgd.expert",
       ("optimizer.noise_multiplier = sigmas[done]", "optimizer.noise_multiplier = 0.5 * sigmas[done]"),
       ("log_releases.record(opt.noise_multiplier)", "log_releases.record(2 * opt.noise_multiplier)"),
       killers=(NS + "test_expert_noise_std_is_sigma_times_clip",), subset=True),
    _m("matcher: noise x0.5", "dpgd.matching.release",
       (ITERATION_NOISE, ITERATION_NOISE.replace("alpha=noise", "alpha=0.5 * noise")),
       killers=(NS + "test_matcher_noise_std_is_sigma_times_clip",)),
    _m("matcher release=once: noise x0.5", "dpgd.matching.release",
       (ONCE_NOISE, ONCE_NOISE.replace("alpha=noise", "alpha=0.5 * noise")),
       killers=(NS + "test_matcher_once_noise_std_is_sigma_times_clip",)),
    _m("selection: gain noise x0.5", "dpgd.selection",
       ("noise_std = float(noise_multiplier) * math.sqrt(gains.numel())",
        "noise_std = 0.5 * float(noise_multiplier) * math.sqrt(gains.numel())"),
       killers=(NS + "test_selection_noise_std_is_sigma_times_sqrt_k_minus_1",)),
    # --- sensitivity constants halved ------------------------------------------------------
    _m("dp_merf: SENSITIVITY = 0.5", "dpgd.generators.dp_merf", ("SENSITIVITY = 1.0", "SENSITIVITY = 0.5"),
       killers=(NS + "test_dp_merf_noise_std_is_sigma_times_one",
                GEN + "test_dp_merf_release_noise_is_multiplier_times_sensitivity"), subset=True),
    _m("pe: SENSITIVITY = 0.5", "dpgd.generators.pe", ("SENSITIVITY = 1.0", "SENSITIVITY = 0.5"),
       killers=(NS + "test_pe_vote_noise_std_is_sigma_times_one",)),
    _m("matcher: embeddings clipped to 2C, noise for C", "dpgd.matching.release",
       ("clipped = clip_rows(embeddings, clip_norm)", "clipped = clip_rows(embeddings, 2 * clip_norm)"),
       killers=(NS + "test_one_record_moves_a_matcher_class_sum_by_at_most_c",)),
    # --- Poisson sampling --------------------------------------------------------------------
    _m("matcher: Poisson rate ignored (q = 1)", "dpgd.matching.release",
       ("< sample_rate\n", "< 1.0\n"),
       killers=(PS + "test_poisson_batches_follow_binomial_class_sizes",), subset=True),
    _m("matcher: fixed-size batches instead of Poisson", "dpgd.matching.release",
       ("mask = torch.rand(labels.shape[0], generator=generator) < sample_rate",
        "mask = torch.zeros(labels.shape[0], dtype=torch.bool).index_fill_(0, torch.randperm("
        "labels.shape[0], generator=generator)[:round(sample_rate * labels.shape[0])], True)"),
       killers=(PS + "test_poisson_batches_follow_binomial_class_sizes",)),
    _m("dp_sgd VAE: Poisson rate ignored (q = 1)", "dpgd.generators.dp_sgd",
       ("generator=sampling) < need.sample_rate", "generator=sampling) < 1.0"),
       killers=(PS + "test_dp_sgd_vae_batches_follow_binomial",)),
    _m("expert: Poisson rate ignored (q = 1)", "dpgd.expert",
       ("DPDataLoader(private, sample_rate=sample_rate,", "DPDataLoader(private, sample_rate=1.0,"),
       killers=(PS + "test_expert_batches_follow_binomial",)),
    _m("matcher: Poisson mask from the public seed", "dpgd.pipeline",
       ('sampling_generator = ctx.noise.generator("match", "sampling")',
        'sampling_generator = stage_generator(ctx.seed, "match", "sampling")'),
       killers=(RC + "test_every_dp_stream_is_secret_and_fresh_per_run",)),
    _m("dp_sgd VAE: Poisson mask from the public seed", "dpgd.generators.dp_sgd",
       ('sampling = noise.generator("generator", "dp_sgd", "sampling")',
        'sampling = stage_generator(seed, "generator", "dp_sgd", "sampling")'),
       killers=(PS + "test_dp_sgd_vae_masks_come_from_the_noise_source",), subset=True),
    _m("matcher: noise from the public seed", "dpgd.pipeline",
       ('noise_generator = ctx.noise.generator("match", "noise")',
        'noise_generator = stage_generator(ctx.seed, "match", "noise")'),
       killers=(RC + "test_every_dp_stream_is_secret_and_fresh_per_run",)),
    # --- a clean statistic released or used --------------------------------------------------
    _m("matcher: clean class sum returned (noise added out of place)", "dpgd.matching.release",
       (ITERATION_NOISE, ITERATION_NOISE.replace("sums.add_(", "sums.add(")),
       killers=(NS + "test_matcher_noise_std_is_sigma_times_clip",), subset=True),
    _m("counts: clean histogram returned (noise added out of place)", "dpgd.counts",
       ("counts.add_(torch.randn", "counts.add(torch.randn"),
       killers=(NS + "test_count_noise_std_is_sigma_times_one",)),
    _m("dp_merf: decoder fitted to the clean sums", "dpgd.generators.dp_merf",
       ("targets = (noisy / counts.values",
        "targets = (class_feature_sums(features, dataset.train_images, dataset.train_labels, num_classes, "
        "device) / counts.values"),
       killers=(NS + "test_dp_merf_fit_moves_with_the_noise",), subset=True),
    _m("dp_merf: exact class counts as the normaliser", "dpgd.generators.dp_merf",
       ("targets = (noisy / counts.values.to(device)[None, :])",
        "targets = (noisy / torch.bincount(dataset.train_labels, minlength=num_classes).float().to(device)"
        "[None, :])"),
       killers=(NS + "test_dp_merf_normalises_by_the_released_counts",), subset=True),
    _m("expert: exact N as DP-SGD's expected batch", "dpgd.expert",
       ("expected_batch_size=max(1, round(sample_rate * counts.total)),",
        "expected_batch_size=max(1, round(sample_rate * len(private))),"),
       killers=(NS + "test_dp_sgd_expected_batches_use_the_released_total",)),
    _m("dp_sgd VAE: exact N as the expected batch", "dpgd.generators.dp_sgd",
       ("expected_batch = max(1, int(round(need.sample_rate * counts.total)))",
        "expected_batch = max(1, int(round(need.sample_rate * dataset.num_train)))"),
       killers=(NS + "test_dp_sgd_expected_batches_use_the_released_total",)),
    # --- the ledger --------------------------------------------------------------------------
    _m("counts: release not declared to the ledger", "dpgd.pipeline",
       ("[sigma] = declare_planned(ledger, plan, class_counts.COMPONENT)",
        "sigma = plan.for_component(class_counts.COMPONENT)"),
       killers=(RC + "test_a_run_composes_to_the_accountant_value_of_what_ran",), subset=True),
    _m("selection: release not declared to the ledger", "dpgd.pipeline",
       ("[noise_multiplier] = declare_planned(ledger, plan, selection.COMPONENT)",
        "noise_multiplier = plan.for_component(selection.COMPONENT)"),
       killers=(RC + "test_a_run_composes_to_the_accountant_value_of_what_ran",)),
    _m("matcher: ledger sample rate halved", "dpgd.matching.release",
       ("return PrivacyNeed(COMPONENT, matcher_cfg.sample_rate, steps,",
        "return PrivacyNeed(COMPONENT, matcher_cfg.sample_rate / 2, steps,"),
       killers=(RC + "test_matching_samples_at_the_ledgers_rate",), subset=True),
    _m("expert: ledger steps halved", "dpgd.expert",
       ("steps = expert_cfg.steps\n    return PrivacyNeed", "steps = expert_cfg.steps // 2\n    return PrivacyNeed"),
       killers=(RC + "test_a_run_composes_to_the_accountant_value_of_what_ran",)),
    _m("sweep: independent releases composed once", "dpgd.report",
       ("identity = (release_id, json.dumps(mechanism.to_dict(), sort_keys=True))",
        "identity = ('', json.dumps(mechanism.to_dict(), sort_keys=True))"),
       killers=("tests/test_tracking.py::test_composed_privacy_of_a_sweep_with_a_non_private_run_is_infinite",)),
    # --- resume ------------------------------------------------------------------------------
    _m("resume: noise key not restored", "dpgd.privacy.randomness",
       ("return cls(key, SECRET)", "return cls.secret()"),
       killers=(SR + "test_secret_resume_equals_the_uninterrupted_run_with_the_same_key",), subset=True),
    # --- what is published -------------------------------------------------------------------
    _m("release: a private image copied into the distilled set", "dpgd.train",
       ("release / artifacts.DISTILLED_FILE, distilled.images, distilled.labels,",
        "release / artifacts.DISTILLED_FILE, torch.cat([dataset.train_images[:1], distilled.images[1:]]), "
        "distilled.labels,"),
       killers=(RC + "test_no_private_image_is_in_the_release",), subset=True),
    _m("release: exact N written as a float", "dpgd.train",
       ('"num_classes": dataset.num_classes,',
        '"num_classes": dataset.num_classes, "records": float(dataset.num_train),'),
       killers=(RC + "test_release_numbers_hold_no_exact_count",), subset=True),
    _m("release: exact class counts published", "dpgd.train",
       ('"class_counts": release.counts.to_dict(),',
        '"class_counts": {**release.counts.to_dict(), "per_class": dataset.class_counts().tolist()},'),
       killers=(RC + "test_release_numbers_hold_no_exact_count",)),
)

BY_NAME = {mutation.name: mutation for mutation in MUTATIONS}


def source_file(module: str) -> Path:
    """The module's file, found without importing it (the script checks edits cheaply)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LookupError(f"module {module} not found")
    return Path(spec.origin)


def check(mutation: Mutation, source: str | None = None) -> None:
    """Every edit's ``old`` text occurs exactly once (else the mutation no longer applies)."""
    text = source if source is not None else source_file(mutation.module).read_text()
    for old, new in mutation.edits:
        count = text.count(old)
        if count != 1:
            raise LookupError(f"mutation {mutation.name!r}: {old!r} occurs {count} times in {mutation.module}")
        if old == new:
            raise ValueError(f"mutation {mutation.name!r}: an edit changes nothing")


def _enclosing(tree: ast.Module, line: int) -> tuple[ast.stmt, ast.ClassDef | None]:
    """The top-level statement holding ``line``, or the method of a top-level class that does."""
    for node in tree.body:
        start = min([node.lineno, *[d.lineno for d in getattr(node, "decorator_list", [])]])
        if start <= line <= node.end_lineno:
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    item_start = min([item.lineno, *[d.lineno for d in getattr(item, "decorator_list", [])]])
                    if item_start <= line <= item.end_lineno and isinstance(item, (ast.FunctionDef,
                                                                                  ast.AsyncFunctionDef)):
                        return item, node
                raise ValueError(f"line {line} is in class {node.name} but outside its methods")
            return node, None
    raise ValueError(f"line {line} is outside every top-level statement")


def _all_dpgd_modules() -> list[types.ModuleType]:
    import dpgd

    for info in pkgutil.walk_packages(dpgd.__path__, "dpgd."):
        if info.name.startswith("dpgd.configs"):
            continue
        importlib.import_module(info.name)
    return [m for name, m in sys.modules.items() if (name == "dpgd" or name.startswith("dpgd.")) and m is not None]


def apply(name: str) -> Mutation:
    """Run mutation ``name`` in this process (see the module docstring)."""
    mutation = BY_NAME[name]
    modules = _all_dpgd_modules()
    module = importlib.import_module(mutation.module)
    path = Path(inspect.getfile(module))
    source = path.read_text()
    check(mutation, source)
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    # Group the edits by the statement (or method) they fall in.
    groups: dict[tuple[int, int], list[tuple[str, str]]] = {}
    owners: dict[tuple[int, int], tuple[ast.stmt, ast.ClassDef | None]] = {}
    for old, new in mutation.edits:
        first = source[: source.index(old)].count("\n") + 1
        last = first + old.count("\n")
        node, cls = _enclosing(tree, first)
        if last > node.end_lineno:
            raise ValueError(f"mutation {name!r}: {old!r} spans more than one statement")
        key = (node.lineno, node.end_lineno)
        groups.setdefault(key, []).append((old, new))
        owners[key] = (node, cls)
    for key, edits in groups.items():
        node, cls = owners[key]
        start = min([node.lineno, *[d.lineno for d in getattr(node, "decorator_list", [])]])
        segment = "".join(lines[start - 1 : node.end_lineno])
        for old, new in edits:
            segment = segment.replace(old, new, 1)
        # Padded so tracebacks point at the module's own line numbers.
        code = compile("\n" * (start - 1) + textwrap.dedent(segment), str(path), "exec")
        if cls is None:
            names = [t.id for t in node.targets] if isinstance(node, ast.Assign) else [node.name]
            olds = {n: module.__dict__[n] for n in names}
            exec(code, module.__dict__)
            for n in names:  # modules that imported the old object (under any name) get the new one
                plain = isinstance(olds[n], (int, float, str, bytes))  # interned: match the name too
                for other in modules:
                    for alias, value in list(other.__dict__.items()):
                        if value is olds[n] and other is not module and (alias == n or not plain):
                            setattr(other, alias, module.__dict__[n])
        else:
            space: dict[str, object] = {}
            exec(code, module.__dict__, space)
            setattr(getattr(module, cls.name), node.name, space[node.name])
    return mutation
