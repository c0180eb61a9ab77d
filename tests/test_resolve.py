"""The plan a command resolves once, and the keys each stage declares."""

from dataclasses import fields, replace

import pytest

from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.pipeline.config import CodebookConfig, EncodeConfig, FinetuneConfig
from dre_pipeline.pipeline.resolve import resolve
from dre_pipeline.pipeline.stages import codebook, encode
from dre_pipeline.pipeline.stages.finetune import workspace

STAGE_FIELDS = {"codebook": codebook.KEY_FIELDS, "encode": encode.KEY_FIELDS + encode.MINI_BATCH_KEY_FIELDS,
                "finetune": workspace.KEY_FIELDS}
# Settings that reach keys another way: the LLM's identity, the graph's fingerprint, the prompts' tokens.
THROUGH_INPUTS = {"llm_path", "data_dir", "use_text", "max_text_tokens"}


def test_every_setting_enters_one_stages_key_or_an_input_it_reads():
    """A field added to a config decides where it counts; none falls into a key by inheritance."""
    declared = [name for names in STAGE_FIELDS.values() for name in names]
    assert len(declared) == len(set(declared))  # no setting in two stages' keys
    assert set(declared) | THROUGH_INPUTS == {f.name for f in fields(FinetuneConfig)}
    assert set(declared).isdisjoint(THROUGH_INPUTS)
    own = {"codebook": CodebookConfig, "encode": EncodeConfig, "finetune": FinetuneConfig}
    for stage, names in STAGE_FIELDS.items():  # each stage's fields are its config's
        assert set(names) <= {f.name for f in fields(own[stage])}, stage


@pytest.fixture(scope="module")
def plan(tiny_llm, tmp_path_factory):
    cfg = FinetuneConfig(llm_path=str(tiny_llm), dataset="synthetic", max_codes=300)
    return resolve(cfg, Store(tmp_path_factory.mktemp("store")))


def test_an_upstream_setting_reaches_a_downstream_key_only_through_the_upstream_key(plan):
    cfg, store = plan.cfg, plan.store
    fewer_codes = resolve(replace(cfg, max_codes=200), store)
    assert fewer_codes.keys["codebook"] != plan.keys["codebook"]
    assert fewer_codes.keys["encode"] != plan.keys["encode"]  # through the codebook's key
    assert encode.encode_key(replace(cfg, max_codes=200), plan.keys["codebook"], plan.data,
                             plan.batch_nodes) == plan.keys["encode"]
    more_views = resolve(replace(cfg, num_views=2), store)
    assert more_views.keys["codebook"] == plan.keys["codebook"] and more_views.keys["encode"] != plan.keys["encode"]
    # stage two's settings leave stage one's keys as they are
    assert resolve(replace(cfg, lora_r=4, ft_epochs=3), store).keys == plan.keys


def test_a_plan_is_resolved_without_building_anything(plan):
    assert set(plan.keys) == {"codebook", "encode"}  # the synthetic graph has its own features
    assert not plan.store.list("codebook") and not plan.store.list("encode")
    assert len(plan.split) == plan.data.num_nodes and plan.llm.identity


def test_the_seeding_share_enters_mini_batch_keys_only(plan):
    """Full-batch keys are as they were before mini-batch seeding had a setting; batched ones hold it."""
    cfg, store = plan.cfg, plan.store
    assert resolve(replace(cfg, reconstruction_seeds=0.25), store).keys == plan.keys  # synthetic trains full batch
    mini = replace(cfg, batch_nodes=64)
    assert resolve(mini, store).keys["encode"] != plan.keys["encode"]
    assert resolve(replace(mini, reconstruction_seeds=0.25), store).keys["encode"] != resolve(mini, store).keys["encode"]
