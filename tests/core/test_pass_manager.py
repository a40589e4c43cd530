import pytest
import torch

from splitc.core.pass_manager import Pass, PassFailure, PassManager, PassResult, PipelineOrderError
from splitc.core.passes.candidates import CandidatesPass
from splitc.core.passes.profile import ProfilePass
from tests.conftest import make_context
from tests.models import IMAGE, Chain


class Boom(Pass):
    name = "boom"
    requires = ("splitc.profile",)

    def run(self, gm, ctx):
        raise ZeroDivisionError("bug")


class Renamer(Pass):
    name = "renamer"

    def run(self, gm, ctx):
        return PassResult(gm, modified=False, summary="nothing")


def test_wrong_order_fails_before_running():
    with pytest.raises(PipelineOrderError, match="'candidates' needs 'splitc.profile'"):
        PassManager([CandidatesPass(), ProfilePass()]).validate()


def test_failure_names_pass_and_those_before_it(tmp_path):
    gm = torch.fx.symbolic_trace(Chain().eval())
    ctx = make_context([IMAGE])
    manager = PassManager([Renamer(), ProfilePass(), Boom()], dump_dir=tmp_path)
    with pytest.raises(PassFailure, match=r"pass 'boom' failed \(passes run before it: renamer, profile\)"):
        manager.run(gm, ctx)
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps == ["00_renamer.txt", "01_profile.txt"]
    assert "splitc.flops" in (tmp_path / "01_profile.txt").read_text()
    assert set(ctx.pass_timings) == {"renamer", "profile"}
