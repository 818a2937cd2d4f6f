# A solution to the exercise in 05_training_on_cifar10.ipynb (its cell has numpy as np).
def my_adamw_step(p, g, m, v, t, lr, betas, eps, weight_decay):
    """One AdamW step on one array; t counts steps from 1. Returns the new p, m, v."""
    b1, b2 = betas
    p = p - lr * weight_decay * p                     # decoupled decay: not part of the gradient
    m = b1 * m + (1 - b1) * g                         # running mean of the gradients
    v = b2 * v + (1 - b2) * g * g                     # running mean of their squares
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)   # bias corrections: m, v start at 0
    p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v
