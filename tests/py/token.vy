# pragma version ^0.4.0
# A minimal ERC-20 token (EIP-20) for cosigner's Ethereum tests (tests/py/eth_evm.py compiles it
# with the vyper compiler from PyPI and deploys it in eth-tester's EVM): the whole supply to one
# holder at deployment; transfer, approve, transferFrom as EIP-20 specifies.

from ethereum.ercs import IERC20

implements: IERC20

balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
totalSupply: public(uint256)


@deploy
def __init__(holder: address, supply: uint256):
    self.balanceOf[holder] = supply
    self.totalSupply = supply
    log IERC20.Transfer(sender=empty(address), receiver=holder, value=supply)


@external
def transfer(to: address, amount: uint256) -> bool:
    # Underflow reverts (vyper checks arithmetic), so a transfer beyond the balance fails.
    self.balanceOf[msg.sender] -= amount
    self.balanceOf[to] += amount
    log IERC20.Transfer(sender=msg.sender, receiver=to, value=amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log IERC20.Approval(owner=msg.sender, spender=spender, value=amount)
    return True


@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    self.allowance[owner][msg.sender] -= amount
    self.balanceOf[owner] -= amount
    self.balanceOf[to] += amount
    log IERC20.Transfer(sender=owner, receiver=to, value=amount)
    return True
