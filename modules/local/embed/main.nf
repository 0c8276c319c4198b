process EMBED {
    tag "${meta.id}"
    label 'process_gpu'

    input:
    tuple val(meta), path(patches)
    path checkpoint
    val settings

    output:
    tuple val(meta), path("${meta.id}_embeds.h5"), emit: embeddings
    tuple val(meta), path("${meta.id}_instance_labels.h5"), emit: labels
    tuple val(meta), path("${meta.id}_instance_regions.csv"), emit: regions
    tuple val(meta), path("${meta.id}_instance_regions.star"), emit: star
    tuple val("${task.process}"), eval('subtomo-embed --version'), emit: versions  // main.nf collects them

    script:
    def args = task.ext.args ?: ''
    // one image serves both: the GPU when the task was given one (the gpu profile), else the CPU;
    // cuda is the GPU the scheduler assigned (CUDA_VISIBLE_DEVICES), and no GPU visible is exit 7
    def device = task.accelerator ? 'cuda' : 'cpu'
    // the batch size comes from the environment (beforeScript, conf/modules.config): not in the task hash
    """
    subtomo-embed-patches \\
        --patches ${patches} \\
        --checkpoint ${checkpoint} \\
        --output-dir . \\
        --device ${device} \\
        ${settings} \\
        \${SUBTOMO_EMBED_BATCH_SIZE:+--set hyper_parameters.batch_size=\$SUBTOMO_EMBED_BATCH_SIZE} \\
        ${args}
    """

    stub:
    """
    touch ${meta.id}_embeds.h5 ${meta.id}_instance_labels.h5 \\
        ${meta.id}_instance_regions.csv ${meta.id}_instance_regions.star
    """
}
