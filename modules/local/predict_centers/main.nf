process PREDICT_CENTERS {
    tag "${meta.id}"
    label 'process_gpu'

    input:
    tuple val(meta), path(tomogram)
    path picks, stageAs: 'picks/*'
    path checkpoint
    val settings

    output:
    tuple val(meta), path("out/${meta.id}_embeds.h5"), emit: embeddings
    tuple val(meta), path("out/${meta.id}_instance_labels.h5"), emit: labels
    tuple val(meta), path("out/${meta.id}_instance_regions.csv"), emit: regions
    tuple val(meta), path("out/${meta.id}_instance_regions.star"), emit: star
    path "versions.yml", emit: versions

    script:
    def args = task.ext.args ?: ''
    // one image serves both: the GPU when the task was given one (the gpu profile), else the CPU
    def device = task.accelerator ? 'cuda' : 'cpu'
    // picks: one file for all tomograms, or a folder of per-tomogram files
    """
    subtomo-embed-centers \\
        --filename ${tomogram} \\
        --set 'data_folder=.' \\
        --set 'centers_file=picks/${picks.name}' \\
        --set 'trained_model=${checkpoint}' \\
        --set 'prediction_folder=out' \\
        --device ${device} \\
        ${settings} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        subtomo-embed: \$(subtomo-embed --version | sed 's/subtomo-embed //')
    END_VERSIONS
    """

    stub:
    """
    mkdir -p out
    touch out/${meta.id}_embeds.h5 out/${meta.id}_instance_labels.h5 out/${meta.id}_instance_regions.csv out/${meta.id}_instance_regions.star
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        subtomo-embed: \$(subtomo-embed --version | sed 's/subtomo-embed //')
    END_VERSIONS
    """
}
