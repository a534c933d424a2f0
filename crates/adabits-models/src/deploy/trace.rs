//! The operations between a model's layers, as the artifact's graph records them: each model's
//! `trace` mirrors its `forward` (the exactness tests of the integer runtime check that they
//! agree).

use adabits_runtime::graph::Node;

/// One recorded operation.
#[derive(Debug)]
pub(crate) enum Traced {
    /// A layer with parameters, by name, with the name of its BatchNorm if it has one (export
    /// fills in its description); `input` as the graph writes it (`None`: the previous node's
    /// value).
    Layer {
        name: String,
        norm: Option<String>,
        input: Option<usize>,
    },
    /// An operation without parameters.
    Op(Node),
}

/// Records a model's operations; value 0 is the transformed input, node `i` makes value `i + 1`.
#[derive(Debug, Default)]
pub(crate) struct Tracer {
    nodes: Vec<Traced>,
}

impl Tracer {
    /// The transformed input's value.
    pub(crate) const INPUT: usize = 0;

    fn push(&mut self, node: Traced) -> usize {
        self.nodes.push(node);
        self.nodes.len()
    }

    /// `input` as the graph writes it: `None` when it is the previous node's value.
    fn input(&self, input: usize) -> Option<usize> {
        (input != self.nodes.len()).then_some(input)
    }

    fn layer(&mut self, name: &str, norm: Option<&str>, input: usize) -> usize {
        let input = self.input(input);
        self.push(Traced::Layer {
            name: name.into(),
            norm: norm.map(Into::into),
            input,
        })
    }

    /// The recorded operations.
    pub(crate) fn into_nodes(self) -> Vec<Traced> {
        self.nodes
    }

    /// A quantized convolution then its BatchNorm.
    pub(crate) fn conv_bn(&mut self, conv: &str, norm: &str, input: usize) -> usize {
        self.layer(conv, Some(norm), input)
    }

    /// `max(x, 0)`.
    pub(crate) fn relu(&mut self, input: usize) -> usize {
        let input = self.input(input);
        self.push(Traced::Op(Node::Relu { input }))
    }

    /// `a + b`.
    pub(crate) fn add(&mut self, a: usize, b: usize) -> usize {
        self.push(Traced::Op(Node::Add { a, b }))
    }

    /// Max pooling.
    pub(crate) fn max_pool(
        &mut self,
        input: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> usize {
        let input = self.input(input);
        self.push(Traced::Op(Node::MaxPool {
            input,
            kernel,
            stride,
            padding,
        }))
    }

    /// Global average pooling, then the quantized classifier (`pool_and_classify`).
    pub(crate) fn pool_and_classify(&mut self, classifier: &str, input: usize) -> usize {
        let input = self.input(input);
        let pooled = self.push(Traced::Op(Node::GlobalAvgPool { input }));
        self.layer(classifier, None, pooled)
    }
}
