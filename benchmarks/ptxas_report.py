"""Registers, spills and shared memory of each Triton kernel of an op, compiled offline for a Hopper GPU: no GPU needed.

Lowers the op's kernel path (ops_gpu.py's inputs and kernels) for CUDA as if on a GPU (effattn's backend checks
answer 'gpu', 132 SMs), captures each Pallas Triton module, and compiles it with triton's CUDA backend (TTIR ->
TTGIR -> LLVM IR -> PTX) and ptxas -v for sm_90a. Spills, and the programs an SM can hold by registers and shared memory
(column /SM), tell which configurations are latency-bound or spill before any GPU time is spent.
Needs the triton package (`pip install triton==3.6.0`: the version the GPU image carries); the Triton IR is this
jax's, so figures can differ a little from the GPU's jax.

  python benchmarks/ptxas_report.py --op gla --mode fwd_bwd
  python benchmarks/ptxas_report.py --op gla --mode fwd_bwd --kernel-config gla:bwd_states=true,num_warps_bwd=8
  python benchmarks/ptxas_report.py --op simple_gla 8 1024 16 128 --out /tmp/ptxas.json
  python benchmarks/ptxas_report.py --op delta_rule 1 65536 16 128   # the split's kernels (long T lowers only)

Columns wgmma and mma.sync count the tensor-core instructions in the PTX: Hopper's asynchronous warpgroup MMA
(4 warps or more) or the synchronous warp-level one.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ops_gpu  # noqa: E402  (a sibling script module)
from kernel_profile import op_fn_and_args  # noqa: E402  (a sibling script module)


@contextlib.contextmanager
def as_if_on_gpu():
  """effattn's `default_backend()` checks answer 'gpu' (kernels lower natively, not in interpret mode)."""
  patched = []
  for name, module in list(sys.modules.items()):
    if name.startswith('effattn.') and hasattr(module, 'default_backend'):
      patched.append((module, module.default_backend))
      module.default_backend = lambda: 'gpu'
  try:
    yield
  finally:
    for module, fn in patched:
      module.default_backend = fn


def triton_modules(fn, args) -> list[dict]:
  """[{name, num_warps, num_stages, ir (MLIR text)}] of the Pallas Triton kernels of jit(fn)(*args) lowered for
  CUDA, in launch order."""
  from jax._src.pallas.triton import pallas_call_registration as reg
  texts, original = [], reg.lowering.lower_jaxpr_to_triton_module

  def capture(*a, **k):
    result = original(*a, **k)
    texts.append(result.module.operation.get_asm(print_generic_op_form=True))
    return result
  reg.lowering.lower_jaxpr_to_triton_module = capture
  try:
    with as_if_on_gpu():
      module = jax.jit(fn).trace(*args).lower(lowering_platforms=('cuda',)).compiler_ir('stablehlo')
  finally:
    reg.lowering.lower_jaxpr_to_triton_module = original
  calls = []

  def walk(op):
    for region in op.regions:
      for block in region.blocks:
        for o in block.operations:
          attrs = o.operation.attributes
          if o.operation.name == 'stablehlo.custom_call' and 'triton' in str(attrs['call_target_name']):
            cfg = attrs['mhlo.backend_config']
            number = lambda key: int(str(cfg[key]).split(':')[0])
            calls.append({'name': str(cfg['name']).strip('"'), 'num_warps': number('num_warps'),
                          'num_stages': number('num_stages')})
          walk(o.operation)
  walk(module.operation)
  return [dict(call, ir=text) for call, text in zip(calls, texts)]


def _for_triton_parser(ir_text: str) -> str:
  """This jax's MLIR prints gpu.barrier with a workgroup `scope` property that the MLIR inside triton 3.6 does not
  know; workgroup is what gpu.barrier means without it."""
  return ir_text.replace(' <{scope = #gpu.barrier_scope<workgroup>}>', '')


def compile_report(ir_text: str, num_warps: int, num_stages: int, arch: int = 90) -> dict:
  """{registers, spill_stores, spill_loads, shared_bytes} of one Triton module compiled for sm_<arch>a."""
  from triton._C.libtriton import ir
  from triton.backends.compiler import GPUTarget
  from triton.backends.nvidia.compiler import CUDABackend, get_ptxas
  from triton.compiler.compiler import Language
  ctx = ir.context()
  ir.load_dialects(ctx)
  backend = CUDABackend(GPUTarget('cuda', arch, 32))
  backend.load_dialects(ctx)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'kernel.ttir')
    Path(path).write_text(_for_triton_parser(ir_text))
    module = ir.parse_mlir_module(path, ctx)
    module.context = ctx
    options = backend.parse_options({'num_warps': num_warps, 'num_stages': num_stages})
    stages, metadata = {}, {}
    backend.add_stages(stages, options, Language.TRITON)
    src = module
    for stage in ('ttgir', 'llir', 'ptx'):
      src = stages[stage](src, metadata)
    ptx = os.path.join(tmp, 'kernel.ptx')
    Path(ptx).write_text(src)
    # Hopper's asynchronous warpgroup MMA against the synchronous warp-level one (Triton falls back to it where
    # an operand layout or shape does not suit wgmma): a tensor-core dot in a sequential loop waits on either
    tensor_ops = {'wgmma': len(re.findall(r'wgmma\.mma_async', src)), 'mma_sync': len(re.findall(r'\bmma\.sync', src))}
    done = subprocess.run([get_ptxas(arch).path, '-v', f'--gpu-name=sm_{arch}a', ptx, '-o', ptx + '.cubin'],
                          capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(f'ptxas failed: {done.stderr[-400:]}')
  registers = re.findall(r'Used (\d+) registers', done.stderr)
  spills = re.findall(r'(\d+) bytes spill stores, (\d+) bytes spill loads', done.stderr)
  return {'registers': int(registers[-1]) if registers else None,
          'spill_stores': int(spills[-1][0]) if spills else 0, 'spill_loads': int(spills[-1][1]) if spills else 0,
          'shared_bytes': metadata.get('shared'), **tensor_ops}


def programs_per_sm(registers: int, num_warps: int, shared_bytes: int | None) -> int:
  """Resident programs per Hopper SM allowed by registers (65536 per SM) and shared memory (228 KB per SM, 1 KB
  of it reserved per program); at most 32."""
  by_registers = 65536 // (registers * 32 * num_warps)
  by_shared = 233472 // ((shared_bytes or 0) + 1024)
  return min(by_registers, by_shared, 32)


def report(op: str, shape, mode: str, configs: dict, window: int = 0, arch: int = 90) -> list[dict]:
  target, args = op_fn_and_args(op, 'kernel', shape, mode, configs, window)
  rows = []
  for kernel in triton_modules(target, args):
    row = {k: kernel[k] for k in ('name', 'num_warps', 'num_stages')}
    try:
      row.update(compile_report(kernel['ir'], kernel['num_warps'], kernel['num_stages'], arch))
      row['programs_per_sm'] = programs_per_sm(row['registers'], kernel['num_warps'], row['shared_bytes'])
    except Exception as e:  # noqa: BLE001  (report and go on)
      row['error'] = f'{type(e).__name__}: {str(e)[:300]}'
    rows.append(row)
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('shape', nargs='*', type=int, default=[1, 256, 2, 128], help='B T H D (small: compile only)')
  p.add_argument('--op', default='gla', choices=ops_gpu.OPS)
  p.add_argument('--mode', default='fwd', choices=('fwd', 'fwd_bwd'))
  p.add_argument('--kernel-config', action='append', default=[], help='OP:field=value,... (as ops_gpu.py)')
  p.add_argument('--window', type=int, default=512, help='softmax_window: window size')
  p.add_argument('--arch', type=int, default=90)
  p.add_argument('--out', default=None, help='also write the rows as JSON')
  args = p.parse_args(argv)
  try:
    import triton  # noqa: F401
  except ImportError:
    raise SystemExit('ptxas_report.py needs triton: pip install triton==3.6.0') from None
  rows = report(args.op, tuple(args.shape), args.mode, ops_gpu.parse_kernel_configs(args.kernel_config),
                args.window, args.arch)
  print(f'{args.op} {args.mode} {"x".join(map(str, args.shape))} {args.kernel_config or ""} sm_{args.arch}a:')
  print(f'{"kernel":28s} {"warps":>5s} {"stages":>6s} {"regs":>5s} {"spill":>6s} {"smem KB":>8s} {"/SM":>4s} '
        f'{"wgmma":>6s} {"mma.sync":>8s}')
  for r in rows:
    if 'error' in r:
      print(f'{r["name"]:28s} {r["num_warps"]:>5d} {r["num_stages"]:>6d} {r["error"]}')
      continue
    smem = r['shared_bytes'] / 1024 if r['shared_bytes'] is not None else float('nan')
    print(f'{r["name"]:28s} {r["num_warps"]:>5d} {r["num_stages"]:>6d} {r["registers"]:>5d} '
          f'{r["spill_stores"]:>6d} {smem:>8.1f} {r["programs_per_sm"]:>4d} {r["wgmma"]:>6d} {r["mma_sync"]:>8d}')
  if args.out:
    Path(args.out).write_text(json.dumps({'meta': vars(args), 'rows': rows}, indent=1))
  return rows


if __name__ == '__main__':
  main()
