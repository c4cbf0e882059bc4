import torch
from model import ViT

net = ViT()
optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
print("training would start here")
