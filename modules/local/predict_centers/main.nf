process PREDICT_CENTERS {
    tag "${meta.id}"
    label 'process_gpu'

    input:
    tuple val(meta), path(tomogram), path(picks, stageAs: 'picks/*')
    path checkpoint
    val settings

    // optional: a picks file for all tomograms that names none of this tomogram's picks gives none
    // (the task's log says "no picks, skipped"); picks folders are paired per tomogram beforehand
    output:
    tuple val(meta), path("out/${meta.id}_embeds.h5"), emit: embeddings, optional: true
    tuple val(meta), path("out/${meta.id}_instance_labels.h5"), emit: labels, optional: true
    tuple val(meta), path("out/${meta.id}_instance_regions.csv"), emit: regions, optional: true
    tuple val(meta), path("out/${meta.id}_instance_regions.star"), emit: star, optional: true
    tuple val("${task.process}"), eval('subtomo-embed --version'), emit: versions  // main.nf collects them

    script:
    def args = task.ext.args ?: ''
    // one image serves both: the GPU when the task was given one (the gpu profile), else the CPU;
    // cuda is the GPU the scheduler assigned (CUDA_VISIBLE_DEVICES), and no GPU visible is exit 7
    def device = task.accelerator ? 'cuda' : 'cpu'
    // picks: this tomogram's own file, or one file for all tomograms; the batch size comes from the
    // environment (beforeScript, conf/modules.config): not in the task hash
    """
    subtomo-embed-centers \\
        --filename ${tomogram} \\
        --set 'data_folder=.' \\
        --set 'centers_file=picks/${picks.name}' \\
        --set 'trained_model=${checkpoint}' \\
        --set 'prediction_folder=out' \\
        --device ${device} \\
        ${settings} \\
        \${SUBTOMO_EMBED_BATCH_SIZE:+--set hyper_parameters.batch_size=\$SUBTOMO_EMBED_BATCH_SIZE} \\
        ${args}
    """

    stub:
    """
    mkdir -p out
    touch out/${meta.id}_embeds.h5 out/${meta.id}_instance_labels.h5 \\
        out/${meta.id}_instance_regions.csv out/${meta.id}_instance_regions.star
    """
}
