//! Which nodes after a convolution its epilogue does: an addition, a ReLU, the next layer's
//! codes.

use crate::graph::Node;

/// What a convolution's epilogue does of the nodes after it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Fusion {
    /// How many nodes after it the epilogue does (an addition, a ReLU, or both): the last
    /// one's value is the group's output, the others' values are never made.
    pub(super) absorbs: usize,
    /// The value an absorbed addition adds (the residual), added before the ReLU.
    pub(super) residual: Option<usize>,
    /// Whether a ReLU ends the group.
    pub(super) relu: bool,
    /// The convolution that alone reads the group's output: the epilogue makes its codes.
    pub(super) codes_for: Option<usize>,
}

/// Per node: the fusion of a convolution with the nodes after it (an addition its output alone
/// feeds, then a ReLU the sum alone feeds; or a ReLU alone), and whether a node is absorbed.
pub(super) fn plan_fusion(nodes: &[Node]) -> (Vec<Fusion>, Vec<bool>) {
    let mut readers = vec![0usize; nodes.len() + 1];
    for (i, node) in nodes.iter().enumerate() {
        for v in node.inputs(i) {
            readers[v] += 1;
        }
    }
    let mut fusion = vec![Fusion::default(); nodes.len()];
    let mut absorbed = vec![false; nodes.len()];
    for i in 0..nodes.len() {
        if !matches!(nodes[i], Node::Conv(_)) || absorbed[i] {
            continue;
        }
        let mut f = Fusion::default();
        let mut last = i;
        // Node `last + 1` reads value `last + 1`, the group's output so far.
        let own = last + 1;
        if readers[own] == 1
            && let Some(Node::Add { a, b }) = nodes.get(own)
            && (*a == own) != (*b == own)
        {
            f.residual = Some(if *a == own { *b } else { *a });
            last += 1;
        }
        if readers[last + 1] == 1 && matches!(nodes.get(last + 1), Some(Node::Relu { input: None }))
        {
            f.relu = true;
            last += 1;
        }
        f.absorbs = last - i;
        if readers[last + 1] == 1 {
            f.codes_for = (last + 1..nodes.len())
                .find(|&j| nodes[j].inputs(j).contains(&(last + 1)))
                .filter(|&j| matches!(nodes[j], Node::Conv(_)));
        }
        absorbed[i + 1..=last].iter_mut().for_each(|a| *a = true);
        fusion[i] = f;
    }
    (fusion, absorbed)
}
