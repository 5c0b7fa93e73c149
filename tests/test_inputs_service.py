"""A run's inputs: ``Layer.geometry`` as the one reading of the receptive-field fields, the one upsampler factory,
and the shared prologue refusing what cannot be done."""

import pytest
import torch

from analysis.engine.demo_network import demo_network_target
from analysis.engine.dissection_sparse import AnchoredUpsample, PlainUpsample
from analysis.engine.networks import NetworkKind, NetworkSpec, load_network
from analysis.engine.receptive_field import LayerGeometry, receptive_fields
from analysis.models import Layer, Network
from analysis.services.inputs import layer_geometry, layer_upsampler, run_inputs
from analysis.services.networks import network_register, network_spec
from analysis.services.runs import RunInputError

pytestmark = pytest.mark.django_db


class _Progress:
    def phase(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        pass


@pytest.fixture
def network():
    spec = NetworkSpec(
        kind=NetworkKind.MODULE,
        target=demo_network_target(),
        kwargs={"num_classes": 7},
        input_size=(64, 48),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    network_register(name="seeded", spec=spec)
    return Network.objects.get(name="seeded")


def test_layer_geometry_is_the_traced_geometry_and_none_when_untraced(network):
    layer = network.layers.get(name="conv5")
    model = load_network(network_spec(network), device="cpu")
    traced = receptive_fields(model, (64, 48), "cpu", layers=["conv5"])["conv5"]
    assert isinstance(layer.geometry, LayerGeometry) and layer.geometry == traced
    Layer.objects.filter(pk=layer.pk).update(rf_stride_x=None)
    layer.refresh_from_db()
    assert layer.geometry is None
    with pytest.raises(RunInputError, match="no receptive-field geometry"):
        layer_geometry(layer, purpose="it cannot be placed")


def test_upsampler_is_anchored_at_the_layers_geometry_and_refused_without_one(network):
    layer = network.layers.get(name="conv5")
    anchored = layer_upsampler(layer, "anchored")
    assert isinstance(anchored, AnchoredUpsample)
    assert anchored.rf_stride == tuple(float(s) for s in layer.geometry.stride)
    assert anchored.rf_offset == layer.geometry.offset and anchored.input_size == (64, 48)
    Layer.objects.filter(pk=layer.pk).update(rf_offset_y=None)
    layer.refresh_from_db()
    assert isinstance(layer_upsampler(layer, "plain"), PlainUpsample)
    params = {"network": "seeded", "dataset": "none", "layer": "conv5", "upsample": "anchored"}
    with pytest.raises(RunInputError, match="No dataset"):
        run_inputs(params, progress=_Progress())


def test_run_inputs_fail_before_any_extraction_when_anchoring_is_impossible(network):
    from analysis.services.datasets import probe_world_run_start

    assert probe_world_run_start(name="tiny", n_images=12, size=32, seed=5, inline=True).status == "succeeded"
    Layer.objects.filter(network=network, name="conv5").update(rf_stride_y=None)
    params = {"network": "seeded", "dataset": "tiny", "layer": "conv5", "upsample": "anchored"}
    with pytest.raises(RunInputError, match="use upsample=plain"):
        run_inputs(params, progress=_Progress())
    assert not network.layers.get(name="conv5").extractions.exists()
    inputs = run_inputs({**params, "upsample": "plain"}, progress=_Progress(), thresholds=True, labels=True)
    assert inputs.extraction is not None and inputs.thresholds.shape == (inputs.layer.units,)
    assert inputs.thresholds.dtype == torch.float32 and int(inputs.label_category[0]) == -1
    assert inputs.input_size == (64, 48)
